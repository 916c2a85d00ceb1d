"""Serve a GPT over HTTP: python serve.py ckpt=<file or run dir> | pretrained=<hub id or dir> [port=8000 ...]

An OpenAI-compatible API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``) and a chat
page at ``/``, on FastAPI + uvicorn (gpt/server.py says why). Concurrent requests are decoded together, one KV-cache
row each (gpt/batching.py). Binds to 127.0.0.1 unless ``host=`` says otherwise. Imports no Lightning.
"""

from __future__ import annotations

import socket
import sys

import hydra
from omegaconf import DictConfig

from gpt.cli import run_cli, user_errors
from gpt.errors import UserError


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error saying why there cannot be one."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another port= or host=") from None
    return sock


def run(cfg: DictConfig) -> None:
    import torch

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("serve.py needs FastAPI and uvicorn: pip install -e '.[serve]'") from None

    from gpt.batching import BatchedDecoder
    from gpt.generation import check_sampling
    from gpt.quantize import check_dtype, for_decoding, weight_bytes
    from gpt.server import ServeSettings, create_app
    from gpt.tasks import load_for

    for name in ("max_concurrent", "max_tokens", "max_tokens_limit", "max_body_bytes"):
        if not isinstance(cfg[name], int) or cfg[name] < 1:
            raise UserError(f"{name} must be a positive integer, got {cfg[name]!r}")
    if not isinstance(cfg.max_waiting, int) or cfg.max_waiting < 0:
        raise UserError(f"max_waiting must be an integer >= 0, got {cfg.max_waiting!r}")
    if not isinstance(cfg.port, int) or not 0 <= cfg.port <= 65535:
        raise UserError(f"port must be in 0..65535 (0 = any free port), got {cfg.port!r}")
    if cfg.max_tokens > cfg.max_tokens_limit:
        raise UserError(f"max_tokens={cfg.max_tokens} is above max_tokens_limit={cfg.max_tokens_limit}")
    if cfg.api_key is not None and not str(cfg.api_key):
        raise UserError("api_key is empty; give a secret string, or leave it null for no key")
    check_dtype(cfg.dtype, cfg.device)
    ckpt = cfg.ckpt and hydra.utils.to_absolute_path(cfg.ckpt)
    sock = listen(cfg.host, cfg.port)  # before the model loads: a taken port fails at once
    model, tokenizer, task = load_for("serve", ckpt, cfg.pretrained, cfg.device)
    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p, model.cfg.vocab_size)
    n_parameters = model.num_parameters()
    model = for_decoding(model, cfg.dtype, cfg.device)
    model_id = cfg.model_name or (str(cfg.pretrained) if cfg.pretrained else "gpt-from-scratch")
    settings = ServeSettings(
        model_id=model_id, api_key=cfg.api_key and str(cfg.api_key), max_tokens=cfg.max_tokens,
        max_tokens_limit=cfg.max_tokens_limit, max_body_bytes=cfg.max_body_bytes, max_waiting=cfg.max_waiting,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
    )
    decoder = BatchedDecoder(model, cfg.max_concurrent, tokenizer.eot_id)
    app = create_app(decoder, tokenizer, task, settings)
    host, port = sock.getsockname()[:2]
    if host not in ("127.0.0.1", "::1", "localhost") and not cfg.api_key:
        print(f"warning: listening on {host} without an api_key: anyone who can reach it can use it", file=sys.stderr)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"serving {model_id} ({task.name}, {n_parameters:,} parameters, {weight_bytes(model) / 1e6:.1f} MB of "
          f"weights in {cfg.dtype}, {torch.get_num_threads()} threads) at {url}: chat page {url}/, API {url}/v1",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, timeout_graceful_shutdown=2))
    server.run(sockets=[sock])


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
