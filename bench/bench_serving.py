"""vLLM `LLM.generate` vs transformers `generate` on the same requests: requests/s and output tokens/s.

Run with the vLLM virtualenv's python (`.ci/vllm_env.sh`), so both engines run in one process environment on the
same machine in one run (transformers there is vLLM's pinned one):

    VLLM_CPU_KVCACHE_SPACE=1 PYTHONPATH=src ~/.cache/bluelm-hf/venv-vllm/bin/python bench/bench_serving.py \
        --model nano --model random-100m --n 64

`--model` (repeatable): a checkpoint folder (plain files), `nano` (a copy of the shipped nano) or `random-100m`: a
BlueLM of about 100M parameters with random weights (seed 0), the nano's tokenizer, image processor and tile
layout, built on the fly and saved with its code files to a temporary folder (no Hub). Random weights rarely
write the EOS, so its completions run to `--max-new-tokens`: a throughput measurement, not a quality one.
Requests: the first N held-out nano questions with their images, thinking on, greedy, `--max-new-tokens` each.
`generate` runs them in left-padded batches of `--batch-size`; vLLM gets all of them at once (its scheduler batches).
vLLM's start-up (engine, profiling) is reported apart and not counted in its throughput.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def build_random_bluelm(path: Path, seed: int = 0) -> int:
    """A ~100M-parameter BlueLM with random weights and the nano's processor, saved to `path`; its parameter count."""
    from transformers import AutoProcessor

    from bluelm_hf import NANO, BlueLMVConfig, BlueLMVForConditionalGeneration

    config = BlueLMVConfig.from_pretrained(NANO)
    text, vision = config.text_config.to_dict(), config.vision_config.to_dict()
    text.update(hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12,
                num_key_value_heads=4, head_dim=64)
    vision.update(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6)
    config = BlueLMVConfig(**{**config.to_dict(), "text_config": text, "vision_config": vision,
                              "projector_hidden_size": 768})
    torch.manual_seed(seed)
    model = BlueLMVForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(NANO).save_pretrained(path)
    model.generation_config.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_generate(model_path, prompts, images, batch_size, max_new_tokens):
    from bluelm_hf.inference import load

    model, processor = load(model_path)
    processor.tokenizer.padding_side = "left"
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    start = time.perf_counter()
    tokens = 0  # generated tokens up to and including EOS, as vLLM counts them
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = processor(text=prompts[i : i + batch_size], images=images[i : i + batch_size],
                              return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                tokens += row.index(eos) + 1 if eos in row else len([t for t in row if t != pad])
    return time.perf_counter() - start, tokens


def run_vllm(model_path, prompts, images, max_new_tokens):
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=str(model_path), max_model_len=1024, reasoning_parser="bluelm", enforce_eager=True)
    startup_s = time.perf_counter() - start
    requests = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
    params = SamplingParams(temperature=0, max_tokens=max_new_tokens)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    del llm
    return startup_s, seconds, sum(len(o.outputs[0].token_ids) for o in outputs)


def bench(model_path, n, batch_size, max_new_tokens):
    from bluelm_hf.inference import load, user_message
    from bluelm_hf.nano_task import NANO_EVAL_SEED, draw_sample

    samples = [draw_sample(NANO_EVAL_SEED, i, "eval") for i in range(n)]
    images = [s.render() for s in samples]
    _, processor = load(model_path)
    prompts = [processor.apply_chat_template([user_message(s.question)], add_generation_prompt=True, enable_thinking=True)
               for s in samples]
    hf_s, hf_tokens = run_generate(model_path, prompts, images, batch_size, max_new_tokens)
    startup_s, vllm_s, vllm_tokens = run_vllm(model_path, prompts, images, max_new_tokens)
    result = {
        "generate": {"s": round(hf_s, 2), "req_per_s": round(n / hf_s, 2), "out_tok_per_s": round(hf_tokens / hf_s, 1),
                     "out_tokens": hf_tokens},
        "vllm": {"startup_s": round(startup_s, 1), "s": round(vllm_s, 2), "req_per_s": round(n / vllm_s, 2),
                 "out_tok_per_s": round(vllm_tokens / vllm_s, 1), "out_tokens": vllm_tokens},
    }
    result["ratio_req_per_s"] = round(result["vllm"]["req_per_s"] / result["generate"]["req_per_s"], 2)
    result["ratio_out_tok_per_s"] = round(result["vllm"]["out_tok_per_s"] / result["generate"]["out_tok_per_s"], 2)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="checkpoint folder, `nano` or `random-100m` (repeatable: one run, one row each)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from bluelm_hf import NANO

    results = {"requests": args.n, "threads": torch.get_num_threads(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model:
            path, info = Path(name), {}
            if name == "nano":
                path = Path(tmp) / "bluelm-nano"
                shutil.copytree(NANO, path, symlinks=False)  # a user's checkpoint folder: plain files
            elif name == "random-100m":
                path = Path(tmp) / "bluelm-random-100m"
                info["parameters"] = build_random_bluelm(path)
            results["models"][name] = {**info, **bench(path, args.n, args.batch_size, args.max_new_tokens)}
            print(json.dumps({name: results["models"][name]}), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
