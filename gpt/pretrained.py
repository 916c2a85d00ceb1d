"""GPT-2 weights in the Hugging Face layout <-> GPTModel. Pure torch + safetensors + json (no transformers).

A Hugging Face GPT-2 directory holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``). Besides
the names (``wte`` is our ``tok_emb``, ``h.3.ln_1`` our ``trf_blocks.3.norm1``, ...) two things differ in shape:

- GPT-2's linear layers are ``Conv1D`` modules that store their weight as (in, out); ``nn.Linear`` stores (out, in).
- GPT-2's attention has one fused projection ``c_attn`` whose output is q | k | v side by side; ours has three.

Loading never holds two full copies of the weights: the model's memory is reserved without a random fill, and the
file is read one tensor at a time (no memory map) and copied into place. Peak RSS: see benchmarks/load_rss.py.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from gpt.attention import stack_heads
from gpt.errors import UserError
from gpt.model import GPTConfig, GPTModel
from gpt.tokenizer import Tokenizer, load_tokenizer

HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's four sizes on the Hugging Face hub
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the format's own limit (the safetensors library refuses larger)
# GPT-2's choices that our GPTModel hard-codes; a config.json asking for anything else is refused.
FIXED = {
    "activation_function": "gelu_new",  # GELU, tanh approximation
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
}
# Names inside block i (GPT-2 "h.i." -> ours "trf_blocks.i."), except the fused c_attn.
BLOCK = {
    "ln_1.weight": "norm1.scale",
    "ln_1.bias": "norm1.shift",
    "ln_2.weight": "norm2.scale",
    "ln_2.bias": "norm2.shift",
    "attn.c_proj.weight": "att.out_proj.weight",
    "attn.c_proj.bias": "att.out_proj.bias",
    "mlp.c_fc.weight": "ff.layers.0.weight",
    "mlp.c_fc.bias": "ff.layers.0.bias",
    "mlp.c_proj.weight": "ff.layers.2.weight",
    "mlp.c_proj.bias": "ff.layers.2.bias",
}
CONV1D = {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}  # stored (in, out)
QKV = ("att.W_query", "att.W_key", "att.W_value")  # c_attn's three parts, in order
TOP = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "final_norm.scale",
    "ln_f.bias": "final_norm.shift",
    "lm_head.weight": "out_head.weight",
}
# GPT-2's parts: a model with any other value has no GPT-2 layout to export to.
GPT2_PARTS = {"attn_impl": ("sdpa", "explicit", "wrapper"), "norm": ("layernorm",), "ffn": ("gelu",),
              "pos": ("learned",), "qk_norm": (False,), "bias": (True,), "value_embeds": (False,)}


# ---------------------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict) -> GPTConfig:
    """Our GPTConfig from a GPT-2 ``config.json``: qkv bias always on (c_attn has one), head tied unless it says not."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"config.json describes a {hf['model_type']!r} model; only GPT-2 (model_type gpt2) loads")
    for key, value in FIXED.items():
        if hf.get(key, value) != value:
            raise UserError(f"config.json sets {key}={hf[key]!r}; GPTModel implements only GPT-2's {value!r}")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise UserError(f"config.json sets n_inner={hf['n_inner']}; GPTModel's feed-forward is 4 x n_embd wide")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        context_length=hf.get("n_positions", hf.get("n_ctx")),
        emb_dim=hf["n_embd"],
        n_heads=hf["n_head"],
        n_layers=hf["n_layer"],
        drop_rate=hf.get("resid_pdrop", 0.1),
        qkv_bias=True,
        tie_weights=hf.get("tie_word_embeddings", True),
    )


def config_to_hf(cfg: GPTConfig, eos_id: int | None) -> dict:
    """A ``config.json`` for ``transformers.GPT2LMHeadModel`` describing ``cfg``."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
        "n_inner": None,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        **FIXED,
    }


# ---------------------------------------------------------------------------------------------------- names


def hf_to_ours(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One GPT-2 tensor -> our name(s) and tensor(s), transposed to (out, in) and with c_attn split in three.
    Names may carry the ``transformer.`` prefix (as save_pretrained writes them) or not (as OpenAI's files do)."""
    name = name.removeprefix("transformer.")
    if name in TOP:
        return [(TOP[name], tensor)]
    if not name.startswith("h."):
        raise UserError(f"unexpected tensor {name!r} in a GPT-2 weights file")
    _, layer, part = name.split(".", 2)
    prefix = f"trf_blocks.{layer}."
    # Views, not copies: load_weights copies each into the model's (out, in) layout once.
    if part in CONV1D:
        tensor = tensor.t()
    if part.startswith("attn.c_attn."):
        kind = part.rsplit(".", 1)[1]  # weight (3C, C) after the transpose, or bias (3C,)
        return [(f"{prefix}{q}.{kind}", t) for q, t in zip(QKV, tensor.chunk(3, dim=0))]
    if part not in BLOCK:
        raise UserError(f"unexpected tensor {name!r} in a GPT-2 weights file")
    return [(prefix + BLOCK[part], tensor)]


def ours_to_hf(model: GPTModel) -> dict[str, torch.Tensor]:
    """Our parameters under GPT-2's names and shapes (as save_pretrained writes them; the tied head is left out)."""
    state = model.state_dict()
    for i in range(model.cfg.n_layers):  # a model with per-head attention (attn_impl=wrapper) exports batched
        stack_heads(state, f"trf_blocks.{i}.att.", model.cfg.n_heads)
    out = {f"transformer.{hf}": state[ours] for hf, ours in TOP.items() if hf != "lm_head.weight"}
    for i in range(model.cfg.n_layers):
        p, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        for hf, ours in BLOCK.items():
            out[h + hf] = state[p + ours].t() if hf in CONV1D else state[p + ours]
        out[h + "attn.c_attn.weight"] = torch.cat([state[f"{p}{q}.weight"] for q in QKV], dim=0).t()
        out[h + "attn.c_attn.bias"] = torch.cat([state[f"{p}{q}.bias"] for q in QKV], dim=0)
    return {name: t.detach().float().contiguous() for name, t in out.items()}


# ---------------------------------------------------------------------------------------------------- files


def resolve_pretrained(name_or_dir: str | Path) -> Path:
    """A local directory as given, or the directory holding a hub id's files once fetched."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_dir).startswith((".", "/", "~")):
        raise UserError(f"{name_or_dir} is not a directory; give a directory with config.json and "
                                f"model.safetensors, or a hub id such as {', '.join(HUB_IDS)}")
    return download(str(name_or_dir))


def download(repo_id: str) -> Path:
    """Fetch config.json and the weights of ``repo_id`` from the Hugging Face hub (or its local cache)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:
        raise UserError(f"fetching {repo_id!r} needs huggingface_hub (pip install huggingface_hub), "
                         "or give a local directory") from e
    try:
        config = Path(hf_hub_download(repo_id, "config.json"))
        try:
            hf_hub_download(repo_id, "model.safetensors")
        except EntryNotFoundError:
            hf_hub_download(repo_id, "pytorch_model.bin")
    except Exception as e:  # offline, unknown repo, gated repo, ...: all mean the weights cannot be had
        raise UserError(f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); it is not a "
                         "local directory either. Check the name and the network, or give a local directory") from e
    return config.parent


def weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"no {' or '.join(WEIGHT_FILES)} in {directory}")


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a weights file, one at a time, each in memory of its own that nothing else holds."""
    if path.suffix == ".safetensors":
        yield from read_safetensors(path)
        return
    try:
        # weights_only: tensors and plain containers only, so a crafted file cannot run code while loading.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds more than tensors; refusing to unpickle it (it could run code)") from e
    while state:
        yield state.popitem()  # the dict lets go of each tensor as it is handed over


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A safetensors file is 8 bytes (little-endian header size), a JSON header {name: {dtype, shape, data_offsets}},
    then the raw bytes. Each tensor is read with a plain read into fresh memory: a memory map (what safe_open uses)
    would keep every page it touched resident, a second copy of the weights as far as RSS goes.

    Every size in the header is checked against the file before anything is allocated: a damaged or crafted file
    is refused in one line instead of asking for terabytes."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if not 0 < header_size <= min(SAFETENSORS_MAX_HEADER, file_size - 8):
            raise UserError(f"{path} is not a safetensors file: its header size {header_size} does not fit the "
                            f"file's {file_size} bytes")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise UserError(f"{path} is not a safetensors file: its header is not a JSON object")
        header.pop("__metadata__", None)
        data_size = file_size - 8 - header_size
        for name, info in header.items():
            dtype, shape, (start, end) = _checked_entry(path, name, info)
            if not 0 <= start <= end <= data_size or end - start != math.prod(shape) * dtype.itemsize:
                raise UserError(f"{path} is damaged: tensor {name} ({list(shape)} {info['dtype']}) does not fit "
                                f"bytes {start}..{end} of its {data_size} bytes of data")
            tensor = torch.empty(shape, dtype=dtype)
            f.seek(8 + header_size + start)
            if f.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - start:
                raise UserError(f"{path} is truncated: tensor {name} is incomplete")
            yield name, tensor


def _checked_entry(path: Path, name: str, info: object) -> tuple[torch.dtype, list[int], tuple[int, int]]:
    """A header entry's dtype, shape and byte range, or a one-line refusal naming what is malformed."""
    try:
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, *offsets)) or len(offsets) != 2:
            raise TypeError
    except (TypeError, KeyError):
        raise UserError(f"{path} is damaged: the header entry of tensor {name} is malformed") from None
    if dtype not in SAFETENSORS_DTYPES:
        raise UserError(f"{path}: tensor {name} has dtype {dtype}, not a float type GPT-2 uses")
    return SAFETENSORS_DTYPES[dtype], list(shape), tuple(offsets)


@contextmanager
def no_random_init() -> Iterator[None]:
    """Inside, nn.init's random fills do nothing, so a new model's weights are only reserved (torch.empty: memory the
    OS hands out when first written). For a model whose every value is about to be read from a file, drawing the
    random numbers first would cost seconds (355M of them for gpt2-medium) and touch all of that memory."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def load_weights(model: GPTModel, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy (our name, tensor) pairs into the model, one at a time; a name missing, unknown or misshapen is an error."""
    params = model.state_dict()  # name -> the model's own memory
    tied = model.cfg.tie_weights
    if tied:
        del params["out_head.weight"]  # the very tensor tok_emb.weight is
    loaded = set()
    for name, tensor in tensors:
        if tied and name == "out_head.weight":
            continue  # some files of tied models store the head as well
        if name not in params:
            raise UserError(f"the weights hold {name!r}, which a GPTModel of {model.cfg} does not have")
        if params[name].shape != tensor.shape:
            raise UserError(f"{name} is {tuple(tensor.shape)} in the weights, {tuple(params[name].shape)} in the model")
        params[name].copy_(tensor)  # transposes into our layout, converts to fp32 / moves to the device if needed
        loaded.add(name)
    if missing := sorted(set(params) - loaded):
        raise UserError(f"the weights lack {len(missing)} tensor(s) a GPTModel of {model.cfg} needs: {missing[:5]}")


def load_pretrained(name_or_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPTModel, Tokenizer]:
    """GPT-2 weights in the Hugging Face layout (a local directory or a hub id) -> GPTModel in eval mode, and its
    tokenizer (GPT-2 BPE, unless the directory was exported from one of our checkpoints with another tokenizer).

    Peak memory is the model plus one tensor: the model's memory is reserved without a random fill, and the file
    is read one tensor at a time, each copied into place and let go."""
    directory = resolve_pretrained(name_or_dir)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(f"no config.json in {directory}")
    try:
        hf = json.loads(config_file.read_text())
        cfg = config_from_hf(hf)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise UserError(f"{config_file} is not a GPT-2 config.json ({e})") from None
    except KeyError as e:
        raise UserError(f"{config_file} lacks the field {e}, which a GPT-2 config.json has") from None
    with torch.device(device), no_random_init():
        model = GPTModel(cfg)
    tensors = (
        pair
        for name, tensor in read_tensors(weights_file(directory))
        # older files store GPT-2's causal mask as a buffer: the model computes its own
        if not name.endswith((".attn.bias", ".attn.masked_bias"))
        for pair in hf_to_ours(name, tensor)
    )
    with torch.no_grad():
        load_weights(model, tensors)
    return model.eval(), load_tokenizer(hf.get("gpt_tokenizer", {"name": "gpt2"}))


def export_hf(model: GPTModel, tokenizer_config: dict, eos_id: int | None, directory: str | Path,
              overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers.GPT2LMHeadModel.from_pretrained`` loads.

    Both files are written into a temporary folder beside ``directory``, flushed to disk, and the folder is renamed
    into place: ``directory`` holds the old export or the whole new one, never a mix. A folder with anything in it is
    refused unless ``overwrite``, which replaces the whole folder."""
    cfg = model.cfg
    other = [f"model.{key}={getattr(cfg, key)}" for key, gpt2 in GPT2_PARTS.items() if getattr(cfg, key) not in gpt2]
    if cfg.kv_heads != cfg.n_heads:
        other.append(f"model.n_kv_heads={cfg.n_kv_heads}")
    if other:
        raise ValueError(f"GPT-2's layout has only GPT-2's parts and this model has {', '.join(other)}; only a model "
                         "trained with the book's parts exports (keep the checkpoint for generate.py/evaluate.py)")
    if not cfg.tie_weights:
        raise UserError("GPT-2 shares its token embedding with the output head, and this model has its own head "
                        "(model.tie_weights=false); only a model trained with model.tie_weights=true exports")
    if not cfg.qkv_bias:
        raise UserError("GPT-2's q/k/v projection has a bias and this model's has none (model.qkv_bias=false); "
                        "only a model trained with model.qkv_bias=true exports")
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file; give a folder to write config.json and model.safetensors into")
    occupied = directory.is_dir() and any(directory.iterdir())
    if occupied and not overwrite:
        raise UserError(f"{directory} is not empty; choose a new folder, or add overwrite=true to replace the "
                        "folder and everything in it")
    hf = config_to_hf(cfg, eos_id)
    hf["gpt_tokenizer"] = tokenizer_config  # read back by load_pretrained; transformers ignores it
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    os.mkdir(tmp)
    try:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file(ours_to_hf(model), tmp / "model.safetensors", metadata={"format": "pt"})
        for path in (tmp / "config.json", tmp / "model.safetensors", tmp):
            _fsync(path)
        if occupied:  # os.replace only replaces an empty folder: move the old one aside first
            old = tmp.with_suffix(".old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
        _fsync(directory.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
