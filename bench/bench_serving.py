"""vLLM `LLM.generate` vs transformers `generate` on the same requests: requests/s and output tokens/s.

Run with the vLLM virtualenv's python (`.ci/vllm_env.sh`), so both engines run in one process environment on the
same machine in one run (transformers there is vLLM's pinned one):

    VLLM_CPU_KVCACHE_SPACE=1 ~/.cache/bluelm-hf/venv-vllm/bin/python bench/bench_serving.py --model CKPT --n 64

Requests: the first N held-out nano questions with their images, thinking on, greedy, `--max-new-tokens` each.
`generate` runs them in left-padded batches of `--batch-size`; vLLM gets all of them at once (its scheduler batches).
vLLM's start-up (engine, profiling) is reported apart and not counted in its throughput.
"""

import argparse
import json
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (plain files)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import bluelm_hf  # noqa: F401
    from bluelm_hf.inference import load, user_message
    from bluelm_hf.nano_task import NANO_EVAL_SEED, draw_sample

    samples = [draw_sample(NANO_EVAL_SEED, i, "eval") for i in range(args.n)]
    images = [s.render() for s in samples]
    model, processor = load(args.model)
    prompts = [processor.apply_chat_template([user_message(s.question)], add_generation_prompt=True, enable_thinking=True)
               for s in samples]
    processor.tokenizer.padding_side = "left"
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    start = time.perf_counter()
    hf_tokens = 0  # generated tokens up to and including EOS, as vLLM counts them
    with torch.inference_mode():
        for i in range(0, args.n, args.batch_size):
            batch = processor(text=prompts[i : i + args.batch_size], images=images[i : i + args.batch_size],
                              return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                hf_tokens += row.index(eos) + 1 if eos in row else len([t for t in row if t != pad])
    hf_s = time.perf_counter() - start
    del model

    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=args.model, max_model_len=1024, reasoning_parser="bluelm", enforce_eager=True)
    startup_s = time.perf_counter() - start
    requests = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
    params = SamplingParams(temperature=0, max_tokens=args.max_new_tokens)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    vllm_s = time.perf_counter() - start
    vllm_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)

    result = {
        "requests": args.n, "threads": torch.get_num_threads(),
        "generate": {"s": round(hf_s, 2), "req_per_s": round(args.n / hf_s, 2), "out_tok_per_s": round(hf_tokens / hf_s, 1)},
        "vllm": {"startup_s": round(startup_s, 1), "s": round(vllm_s, 2), "req_per_s": round(args.n / vllm_s, 2),
                 "out_tok_per_s": round(vllm_tokens / vllm_s, 1)},
    }
    result["ratio_req_per_s"] = round(result["vllm"]["req_per_s"] / result["generate"]["req_per_s"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
