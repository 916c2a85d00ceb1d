"""serve.py end to end: a real server process on a free local port, the real ``openai`` client, raw HTTP for the
requests a client library would never send, and a real browser (headless Chromium) on the chat page."""

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from gpt.chat import close_turn, turn_ids
from gpt.data.sources.alpaca import format_input
from gpt.generation import generate_tokens
from gpt.model import GPTConfig, GPTModel
from gpt.tasks import load_model
from gpt.tokenizer import GPT2Tokenizer

KEY = "sk-test-key"
MODEL = "gpt-from-scratch"


def count_from(a: int) -> str:
    return " ".join(str(a + i) for i in range(1 + a % 5)) + "."


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny GPT trained for a few seconds to answer "Count from N." in the Alpaca template, saved the way train.py
    saves one, twice: as an instruct checkpoint and as a pretrained one (plain continuation)."""
    tmp = tmp_path_factory.mktemp("serve")
    tok = GPT2Tokenizer()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.n_vocab, context_length=96, emb_dim=32, n_heads=2, n_layers=2, drop_rate=0.0,
                    qkv_bias=False, tie_weights=True)
    model = GPTModel(cfg)
    prompts = [tok.encode(format_input({"instruction": f"Count from {a}."})) for a in range(12)]
    start = min(map(len, prompts))
    seqs = [p + tok.encode(count_from(a)) + [tok.eot_id] for a, p in enumerate(prompts)]
    longest = max(map(len, seqs))
    x = torch.tensor([s + [tok.eot_id] * (longest - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster for these thin matrices, above all on a busy machine
    try:
        for _ in range(50):  # the loss covers the responses only: the output head over 50,257 tokens is the cost
            logits = model.out_head(model.hidden_states(x[:, :-1])[:, start - 2 :])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, start - 1 :].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    paths = {}
    for task in ("instruct", "pretrain"):
        paths[task] = tmp / f"{task}.ckpt"
        torch.save({"hyper_parameters": {"model": cfg.to_dict(), "tokenizer": tok.to_config(), "task": {"name": task}},
                    "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, paths[task])
    return paths


class Server:
    """serve.py in a subprocess on a free port of 127.0.0.1 (port=0: it prints the one it got)."""

    def __init__(self, *overrides: str):
        self.proc = subprocess.Popen([sys.executable, "serve.py", "port=0", *overrides], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, self.proc.stdout), lines.put(None)], daemon=True).start()
        seen = []
        while not (seen and seen[-1].startswith("serving")):
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                line = None
            if line is None:  # it exited, or is stuck
                self.proc.kill()
                pytest.fail(f"serve.py did not start:\n{''.join(seen)}")
            seen.append(line)
        self.banner = seen[-1]
        self.url = re.search(r"at (http://127\.0\.0\.1:\d+)", seen[-1]).group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(checkpoints):
    s = Server(f"ckpt={checkpoints['instruct']}", f"api_key={KEY}", "max_concurrent=8", "max_tokens=16",
               "max_tokens_limit=64", "max_body_bytes=4000")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def instruct_model(checkpoints):
    return load_model(checkpoints["instruct"], None)


def generate_py(ckpt: Path, prompt: str, max_new_tokens: int, *overrides: str) -> str:
    proc = subprocess.run([sys.executable, "generate.py", f"ckpt={ckpt}", f"prompt={prompt}", "temperature=0",
                           f"max_new_tokens={max_new_tokens}", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n")
    return proc.stdout[:-1]  # generate.py ends its output with one newline


def post(url: str, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def chat(client, text: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], temperature=0,
                                          **kw)


def streamed(client, text: str, **kw) -> tuple[list[str], object]:
    pieces, usage = [], None
    for chunk in chat(client, text, stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return pieces, usage


def test_chat_streamed_or_not_is_what_generate_py_answers_with_the_right_usage(client, checkpoints, instruct_model):
    model, tok, _ = instruct_model
    expected = generate_py(checkpoints["instruct"], "Count from 3.", 20)
    full = chat(client, "Count from 3.", max_tokens=20)
    pieces, usage = streamed(client, "Count from 3.", max_tokens=20)
    assert expected.strip() and full.choices[0].message.content == expected
    assert "".join(pieces) == expected and len(pieces) > 1  # token by token
    prompt = tok.encode(format_input({"instruction": "Count from 3."}))
    tokens = [int(t) for t in generate_tokens(model, torch.tensor([prompt]), 20, 96, eos_id=tok.eot_id)]
    reply = tokens[: tokens.index(tok.eot_id)] if tok.eot_id in tokens else tokens
    for u in (full.usage, usage):
        assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (len(prompt), len(reply),
                                                                          len(prompt) + len(reply))
    assert full.choices[0].finish_reason == ("stop" if tok.eot_id in tokens else "length")


def test_earlier_turns_go_in_as_the_terminal_chat_keeps_them(client, instruct_model):
    _, tok, _ = instruct_model
    messages = [{"role": "system", "content": "You count."}, {"role": "user", "content": "Count from 1."},
                {"role": "assistant", "content": "1 2."}, {"role": "user", "content": "Count from 2."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    first = turn_ids(tok, "Count from 1.", [])
    expected = turn_ids(tok, "Count from 2.", close_turn(tok, first, tok.encode("1 2.")))
    assert r.usage.prompt_tokens == len(expected)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_stop_strings_cut_the_text_streamed_or_not(client):
    whole = chat(client, "Count from 4.", max_tokens=20).choices[0].message.content
    assert " " in whole
    cut = whole[: whole.index(" ")]
    r = chat(client, "Count from 4.", max_tokens=20, stop=[" ", "never"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    assert "".join(streamed(client, "Count from 4.", max_tokens=20, stop=" ")[0]) == cut


def test_completions_continue_the_prompt(client, instruct_model):
    model, tok, _ = instruct_model
    prompt = format_input({"instruction": "Count from 2."})
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=10)
    ids = tok.encode(prompt)
    tokens = [int(t) for t in generate_tokens(model, torch.tensor([ids]), 10, 96, eos_id=tok.eot_id)]
    reply = tokens[: tokens.index(tok.eot_id)] if tok.eot_id in tokens else tokens
    assert r.choices[0].text == tok.decode(reply) and r.usage.completion_tokens == len(reply)
    assert "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=10, stream=True)) == r.choices[0].text


GOOD = {"messages": [{"role": "user", "content": "Count from 1."}], "max_tokens": 3}
BAD = [
    ("invalid JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "must be a JSON object"),
    ("unknown model", {**GOOD, "model": "gpt-5"}, 404, "does not exist"),
    ("negative max_tokens", {**GOOD, "max_tokens": -1}, 400, "max_tokens must be in 1..64"),
    ("too large max_tokens", {**GOOD, "max_tokens": 65}, 400, "max_tokens must be in 1..64"),
    ("prompt longer than the context", {**GOOD, "messages": [{"role": "user", "content": "count " * 90}]}, 400,
     "context is 96 tokens"),
    ("missing messages", {"max_tokens": 3}, 400, "messages: Field required"),
    ("messages of the wrong type", {"messages": "Count from 1."}, 400, "messages: Input should be a valid list"),
    ("a number as a string", {**GOOD, "temperature": "0.5"}, 400, "temperature: Input should be a valid number"),
    ("an unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("no user message last", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "role is 'user'"),
    ("a negative temperature", {**GOOD, "temperature": -1}, 400, "temperature must be >= 0"),
    ("a seed beyond 64 bits", {**GOOD, "seed": 2**64}, 400, "seed must be a 64-bit integer"),
    ("a body over the cap", {**GOOD, "pad": "x" * 5000}, 413, "over the 4000 bytes"),
]


@pytest.mark.parametrize("body, status, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_request_gets_its_4xx_in_openai_shape_and_the_server_goes_on(server, body, status, message):
    code, reply = post(f"{server.url}/v1/chat/completions", body)
    assert code == status
    assert set(reply["error"]) == {"message", "type", "param", "code"} and message in reply["error"]["message"]
    code, reply = post(f"{server.url}/v1/chat/completions", GOOD)
    assert code == 200 and reply["usage"]["completion_tokens"] >= 1


def test_the_api_key_is_required(server, client):
    for key in (None, "sk-wrong"):
        code, reply = post(f"{server.url}/v1/chat/completions", GOOD, key=key)
        assert code == 401 and reply["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    assert post(f"{server.url}/v1/chat/completions", GOOD)[0] == 200
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:  # health and the page need no key
        assert json.load(r)["status"] == "ok"


def test_16_concurrent_streams_each_equal_its_sequential_result(client):
    # Prompts of different lengths and different max_tokens: the rows sit at different positions and finish at
    # different steps, so rows move while the others decode.
    asks = [(f"Count from {a}." + " Now." * (a % 4), 2 + a % 7) for a in range(16)]
    sequential = [chat(client, p, max_tokens=n).choices[0].message.content for p, n in asks]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda ask: "".join(streamed(client, ask[0], max_tokens=ask[1])[0]), asks))
    assert together == sequential
    assert len(set(sequential)) > 2


def test_serving_in_int8_answers_what_generate_py_answers_in_int8(checkpoints):
    s = Server(f"ckpt={checkpoints['instruct']}", "dtype=int8", "max_tokens=12")
    try:
        assert "MB of weights in int8" in s.banner
        reply = post(f"{s.url}/v1/chat/completions", {"model": MODEL, "temperature": 0, "max_tokens": 12,
                                                         "messages": [{"role": "user", "content": "Count from 5."}]})
    finally:
        s.stop()
    assert reply[0] == 200
    assert reply[1]["choices"][0]["message"]["content"] == generate_py(checkpoints["instruct"], "Count from 5.", 12,
                                                                       "dtype=int8")


@pytest.mark.parametrize("overrides, message", [
    (["port=0"], "give exactly one of ckpt=<checkpoint file or run directory> or pretrained="),
    (["ckpt=CKPT", "dtype=fp16"], "dtype must be one of fp32, bf16, int8"),
    (["ckpt=CKPT", "port=PORT"], "cannot listen on 127.0.0.1:PORT"),
])
def test_serve_py_refuses_bad_settings_in_one_line(server, checkpoints, overrides, message):
    port = server.url.rsplit(":", 1)[1]  # a port the running server holds
    args = [o.replace("PORT", port).replace("CKPT", str(checkpoints["instruct"])) for o in overrides]
    proc = subprocess.run([sys.executable, "serve.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == proc.stderr.strip().splitlines()[-1] and message.replace("PORT", port) in proc.stderr


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium here (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(arg)
    b = webdriver.Chrome(options=options, service=Service(executable_path=driver))  # the system's driver
    yield b
    b.quit()


def test_the_chat_page_streams_a_reply_in_a_real_browser(browser, server, client):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    for field, value in (("key", KEY), ("temperature", "0"), ("max_tokens", "20"), ("input", "Count from 3.")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".assistant[data-done='true']"))
    reply = browser.find_element(By.CSS_SELECTOR, ".assistant")
    assert reply.get_attribute("textContent") == chat(client, "Count from 3.", max_tokens=20).choices[0].message.content
    assert int(reply.get_attribute("data-chunks")) > 1  # it arrived in pieces, as they were decoded
    assert "tokens/s" in browser.find_element(By.ID, "stats").text
    assert browser.find_element(By.CSS_SELECTOR, ".user").text == "Count from 3."
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
