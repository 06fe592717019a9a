"""The distributed path for real: 2 CPU processes in one gloo process group, a few steps each.

DDP: the two launchers a user has, one recipe each (each recipe also runs under the other launcher with FSDP2:
SFT resumed through torchrun below, GRPO through `accelerate launch` in test_grpo.py):
- SFT (BlueLM-nano) under `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml` (accelerate's
  MULTI_CPU: mpirun, Open MPI; .ci/run installs openmpi-bin);
- GRPO (from the bundled nano) under `torchrun --nproc_per_node 2` (torch's elastic launcher; accelerate's
  PartialState joins its group).

FSDP2 (docs/distributed.md): recipes/sft.py under `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` and
under `torchrun` with the trainer's `--fsdp` / `--fsdp_config`; each check reads what each rank actually held (the
per-rank files of the sharded checkpoint, or each rank's local shard of every parameter), not just that it ran.
This file is also the 2-process worker of `test_fsdp2_units_*` (`python tests/test_distributed.py --worker OUT
CASE...`).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FSDP2_TRAINER_CONFIG = ROOT / "recipes/accelerate/fsdp2_trainer.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HAS_MPIRUN = shutil.which("mpirun") is not None
ENV = {
    "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}  # fmt: skip


def run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=ROOT, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]  # fmt: skip


def launch(launcher: str, script: str, *args: str) -> str:
    if launcher == "torchrun":
        prefix = torchrun()
    else:
        prefix = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        ]  # fmt: skip
    return run([*prefix, str(ROOT / "recipes" / script), *args])


def assert_one_group_of_two(output: str) -> None:
    for rank in (0, 1):
        assert f"[bluelm-hf] rank {rank}/2: backend=gloo world_size=2 ranks=[0, 1]" in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MPIRUN, reason="accelerate's MULTI_CPU needs mpirun (apt-get install openmpi-bin)")
def test_two_process_sft_under_accelerate_launch(tmp_path):
    import bluelm_hf
    from nano_data import make_sft_dataset  # recipes/nano, on sys.path by conftest

    sft_dir = tmp_path / "sft"
    make_sft_dataset(16).save_to_disk(str(tmp_path / "data"))
    out = launch(
        "accelerate", "sft.py", "--config", str(ROOT / "recipes/nano/sft.yaml"), "--model_name_or_path", str(bluelm_hf.NANO),
        "--dataset_name", str(tmp_path / "data"), "--output_dir", str(sft_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert (sft_dir / "config.json").exists() and (sft_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_two_process_grpo_under_torchrun(tmp_path):
    """GRPO from the bundled BlueLM-nano in one 2-process group: TRL's GRPOTrainer with our processor (its
    InternVL-style tile count, `crop_to_patches` / `num_patches`, and a processor output of model inputs only)."""
    import bluelm_hf

    from nano_data import make_sft_dataset  # recipes/nano, on sys.path by conftest

    grpo_dir = tmp_path / "grpo"
    make_sft_dataset(8, seed=1, think_ratio=1.0).save_to_disk(str(tmp_path / "data"))
    out = launch(
        "torchrun", "grpo.py", "--config", str(ROOT / "recipes/nano/grpo.yaml"),
        "--model_name_or_path", str(bluelm_hf.NANO), "--dataset_name", str(tmp_path / "data"),
        "--output_dir", str(grpo_dir), "--max_steps", "2", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--max_completion_length", "8", "--logging_steps", "1",
    )  # fmt: skip
    assert_one_group_of_two(out)
    assert "GRPO wall time" in out and "2 process(es)" in out
    assert "'rewards/accuracy_reward/mean'" in out  # the rewards ran on real rollouts
    assert (grpo_dir / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- FSDP2
DDP_MARK = "find_unused_parameters=True was specified in DDP constructor"  # what the silent DDP fallback logs


def sft_args(output_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    """Fine-tune the bundled nano for 4 steps at a learning rate that moves the weights, checkpoints at 2 and 4."""
    import bluelm_hf

    return [
        str(ROOT / "recipes/sft.py"), "--config", str(ROOT / "recipes/nano/sft.yaml"),
        "--model_name_or_path", str(bluelm_hf.NANO), "--dataset_name", str(data_dir), "--output_dir", str(output_dir),
        "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--warmup_steps", "0", "--save_strategy", "steps", "--save_steps", "2",
        "--save_total_limit", "3", "--logging_steps", "1", "--torch_threads", "1", *extra,
    ]  # fmt: skip


def shard_files(shard_dir: Path) -> dict[str, dict[str, tuple[list[int], list[int]]]]:
    """{tensor name: {file: (offsets, sizes)}} from a torch.distributed.checkpoint folder's metadata: which rank's
    file (`__<rank>_0.distcp`) holds which slice of each tensor."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(shard_dir)).read_metadata()
    layout: dict[str, dict[str, tuple[list[int], list[int]]]] = {}
    for index, info in metadata.storage_data.items():
        tensor = metadata.state_dict_metadata[index.fqn]
        if not hasattr(tensor, "chunks"):  # pickled non-tensors (param_groups)
            continue
        chunk = tensor.chunks[index.index]
        layout.setdefault(index.fqn, {})[info.relative_path] = (list(chunk.offsets), list(chunk.sizes))
    return layout


def full_size(shard_dir: Path, name: str) -> list[int]:
    import torch.distributed.checkpoint as dcp

    return list(dcp.FileSystemReader(str(shard_dir)).read_metadata().state_dict_metadata[name].size)


def assert_split_across_two_ranks(shard_dir: Path, min_rows: int = 2) -> int:
    """Every tensor with >= min_rows rows is stored as two disjoint row ranges, one per rank file; returns how many."""
    layout = shard_files(shard_dir)
    checked = 0
    for name, files in layout.items():
        size = full_size(shard_dir, name)
        if not size or size[0] < min_rows:
            continue
        assert sorted(files) == ["__0_0.distcp", "__1_0.distcp"], (name, files)
        (off0, rows0), (off1, rows1) = (files["__0_0.distcp"], files["__1_0.distcp"])
        assert off0[0] == 0 and off1[0] == rows0[0] and rows0[0] + rows1[0] == size[0], (name, size, files)
        assert 0 < rows0[0] < size[0] and rows0[1:] == size[1:], (name, size, files)
        checked += 1
    return checked


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory):
    """One uninterrupted FSDP2 run through accelerate (recipes/accelerate/fsdp2.yaml), and one resumed from its step-2
    checkpoint through torchrun with the trainer's own --fsdp flags: the two ways docs/distributed.md gives."""
    from nano_data import make_sft_dataset  # recipes/nano, on sys.path by conftest

    base = tmp_path_factory.mktemp("fsdp2")
    make_sft_dataset(16).save_to_disk(str(base / "data"))
    accelerate_cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/fsdp2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
    ]  # fmt: skip
    full_log = run([*accelerate_cmd, *sft_args(base / "full", base / "data")])
    resumed_log = run(
        torchrun(
            *sft_args(base / "resumed", base / "data", "--resume_from_checkpoint", str(base / "full/checkpoint-2")),
            "--fsdp", "--fsdp_config", str(FSDP2_TRAINER_CONFIG),
        )
    )
    return base, full_log, resumed_log


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_fsdp2_sft_shards_weights_and_optimizer_state(fsdp2_runs):
    base, full_log, resumed_log = fsdp2_runs
    for log in (full_log, resumed_log):
        assert_one_group_of_two(log)
        assert DDP_MARK not in log, "FSDP was dropped for DDP"
    for run_dir in ("full", "resumed"):
        checkpoint = base / run_dir / "checkpoint-4"
        # 2-D weights and 1-D norms alike: rank 0 wrote rows [0, n/2), rank 1 rows [n/2, n).
        assert assert_split_across_two_ranks(checkpoint / "pytorch_model_fsdp_0") >= 70
        assert assert_split_across_two_ranks(checkpoint / "optimizer_0") >= 100  # AdamW exp_avg / exp_avg_sq
    # Tied lm_head: one tensor in the sharded state (stored under both names, same slices), one in the final folder.
    layout = shard_files(base / "full/checkpoint-4/pytorch_model_fsdp_0")
    assert layout["model.lm_head.weight"] == layout["model.model.language_model.embed_tokens.weight"]


@pytest.mark.slow
def test_fsdp2_final_save_is_a_whole_model_that_loads_as_remote_code(fsdp2_runs):
    base, _, _ = fsdp2_runs
    folder = base / "full"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_bluelm_v.BlueLMVForConditionalGeneration"
    assert not list(folder.glob("_fsdp*.py")), "torch's FSDP sources were copied as the model's code"
    assert_loads_as_remote_code(folder, load_weights(folder))


def assert_loads_as_remote_code(folder: Path, weights: dict) -> None:
    """from_pretrained(trust_remote_code=True) in a process that never imports bluelm_hf (PYTHONPATH cleared, so only
    the folder's code files can define the model) gives these weights, lm_head tied."""
    code = (
        "import sys, torch; from safetensors.torch import load_file\n"
        "from transformers import AutoModelForImageTextToText\n"
        f"m = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert 'bluelm_hf' not in sys.modules, 'bluelm_hf was imported'\n"
        "assert type(m).__module__.startswith('transformers_modules'), type(m).__module__\n"
        "assert m.lm_head.weight is m.model.language_model.embed_tokens.weight\n"
        f"w = load_file({str(folder / 'model.safetensors')!r})\n"
        "sd = m.state_dict(); assert all(torch.equal(sd[k], w[k]) for k in w), 'weights differ'\n"
        "print('ok', type(m).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, **ENV}, cwd="/", timeout=300
    )
    assert result.returncode == 0 and "ok BlueLMVForConditionalGeneration" in result.stdout, result.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_resume_equals_uninterrupted_run(fsdp2_runs):
    import torch

    from bluelm_hf.distributed import consolidate_checkpoint

    base, full_log, resumed_log = fsdp2_runs
    assert "'epoch': '0.25'" in full_log and "'epoch': '0.25'" not in resumed_log  # steps 1-2 were not re-run
    full, resumed = load_weights(base / "full"), load_weights(base / "resumed")
    at_step_2 = load_weights(consolidate_checkpoint(base / "full/checkpoint-2", base / "step2", base / "full"))
    # (save_pretrained keeps the tied lm_head once, under embed_tokens; the trainer's final save writes both names)
    assert sum(not torch.equal(full[k], at_step_2[k]) for k in at_step_2) > 50  # steps 3-4 moved the weights
    differing = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ after resuming, e.g. {differing[:3]}"


@pytest.mark.slow
def test_consolidate_sharded_checkpoint_to_save_pretrained_folder(fsdp2_runs, tmp_path):
    import torch

    import bluelm_hf
    from bluelm_hf.distributed import consolidate_checkpoint

    base, _, _ = fsdp2_runs
    folder = consolidate_checkpoint(base / "full/checkpoint-4", tmp_path / "whole", config_from=bluelm_hf.NANO)
    whole, final = load_weights(folder), load_weights(base / "full")
    assert len(whole) > 70 and set(whole) <= set(final) and all(torch.equal(whole[k], final[k]) for k in whole)
    assert (folder / "processor_config.json").exists() and (folder / "modeling_bluelm_v.py").exists()
    assert_loads_as_remote_code(folder, whole)
    with pytest.raises(FileExistsError, match="not empty"):
        consolidate_checkpoint(base / "full/checkpoint-4", folder, config_from=bluelm_hf.NANO)
    with pytest.raises(FileNotFoundError, match="not a sharded FSDP checkpoint"):
        consolidate_checkpoint(base / "full", tmp_path / "other", config_from=bluelm_hf.NANO)


def test_fsdp_layer_classes_come_from_the_assembled_models(tiny_tokenizer):
    """Shard units are read from the sub-models' `_no_split_modules`: a Llama or a Qwen3 LM, the SigLIP tower."""
    from bluelm_hf import BlueLMVForConditionalGeneration
    from bluelm_hf.assemble import add_bluelm_special_tokens
    from bluelm_hf.distributed import fsdp_layer_classes
    from conftest import tiny_config

    for lm, layer in (("llama", "LlamaDecoderLayer"), ("qwen3", "Qwen3DecoderLayer")):
        config = tiny_config(add_bluelm_special_tokens(tiny_tokenizer), len(tiny_tokenizer), text_config=tiny_lm(lm))
        classes = fsdp_layer_classes(BlueLMVForConditionalGeneration(config))
        assert layer in classes and "SiglipEncoderLayer" in classes, classes
        assert not any("Qwen3" in c for c in classes) if lm == "llama" else "LlamaDecoderLayer" not in classes


def test_training_memory_per_rank_for_the_preset():
    import torch

    from bluelm_hf import BlueLMVConfig, BlueLMVForConditionalGeneration
    from bluelm_hf.distributed import training_memory_per_rank

    with torch.device("meta"):
        n = sum(p.numel() for p in BlueLMVForConditionalGeneration(BlueLMVConfig.bluelm_2_5_3b()).parameters())
    assert n == 2_889_743_728  # the count, lm_head tied
    ddp = training_memory_per_rank(n, 8, "ddp")
    assert ddp["total"] == 16 * n and ddp == training_memory_per_rank(n, 1, "ddp")
    for ranks in (1, 2, 8, 16):
        zero2, zero3, fsdp2 = (training_memory_per_rank(n, ranks, s) for s in ("zero2", "zero3", "fsdp2"))
        assert zero2["weights"] == ddp["weights"] and zero2["optimizer"] == -(-12 * n // ranks)
        assert zero3["total"] == fsdp2["total"] == pytest.approx(16 * n / ranks, abs=3)
        assert fsdp2["weights"] == -(-4 * n // ranks)  # fp32 sharded parameters: the master copy
    fp32 = training_memory_per_rank(n, 2, "ddp", mixed_precision=False)
    assert (fp32["weights"], fp32["gradients"], fp32["optimizer"]) == (4 * n, 4 * n, 8 * n)
    with pytest.raises(ValueError, match="strategy must be one of"):
        training_memory_per_rank(n, 2, "zero1")
    with pytest.raises(ValueError, match="world_size >= 1"):
        training_memory_per_rank(n, 0, "ddp")


def tiny_lm(lm: str) -> dict:
    return dict(
        model_type=lm, vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True,
    )  # fmt: skip


# -------------------------------------------- FSDP2 units, in process: one SFTTrainer per rank, as recipes/sft.py
UNIT_CASES = {
    "qwen3-full-activation-checkpointing": ("qwen3", "full", True),
    "llama-adapter": ("llama", "adapter", False),
    "llama-lora": ("llama", "lora", False),
}


def worker(case: str, output_dir: str) -> None:
    """Train a tiny BlueLM 2 steps with TRL's SFTTrainer under FSDP2, then write what this rank holds."""
    import torch
    import torch.distributed as dist
    from peft import LoraConfig
    from torch.distributed.fsdp import FSDPModule
    from trl import SFTConfig, SFTTrainer

    from bluelm_hf import BlueLMVForConditionalGeneration, BlueLMVImageProcessor, BlueLMVProcessor
    from bluelm_hf.assemble import add_bluelm_special_tokens
    from bluelm_hf.distributed import enable_fsdp_on_cpu, fsdp_layer_classes
    from bluelm_hf.training import apply_train_stage
    from conftest import CORPUS, TILE, tiny_config
    from nano_data import make_sft_dataset, train_tokenizer  # recipes/nano, on sys.path by conftest

    lm, stage, activation_checkpointing = UNIT_CASES[case]
    def own_class(module):  # fully_shard renames a unit's class FSDP<Name>
        return next(c.__name__ for c in type(module).__mro__ if not issubclass(c, FSDPModule))

    enable_fsdp_on_cpu()
    tokenizer = train_tokenizer(CORPUS, vocab_size=200)
    config = tiny_config(add_bluelm_special_tokens(tokenizer), len(tokenizer), text_config=tiny_lm(lm))
    config.text_config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = BlueLMVForConditionalGeneration(config)
    processor = BlueLMVProcessor(
        image_processor=BlueLMVImageProcessor(tile_size=TILE, max_grid_size=3, max_image_side=4 * TILE),
        tokenizer=tokenizer,
    )
    apply_train_stage(model, stage)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fsdp_config = {**json.loads(FSDP2_TRAINER_CONFIG.read_text()), "activation_checkpointing": activation_checkpointing}
    args = SFTConfig(
        output_dir=output_dir, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, warmup_steps=0,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, dataloader_num_workers=0,
        assistant_only_loss=True, max_length=None, bf16=False, activation_checkpointing=False,  # TRL's default: on
        fsdp=True, fsdp_config=fsdp_config,
    )  # fmt: skip
    # PEFT freezes every non-adapter weight, the projector included, unless it is a module to save.
    lora = LoraConfig(
        r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=["multi_modal_projector"]
    )
    peft_config = lora if stage == "lora" else None
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=make_sft_dataset(16), processing_class=processor,
        peft_config=peft_config,
    )  # fmt: skip
    trainer.train()
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    layers = [*base.model.language_model.layers, *base.model.vision_tower.encoder.layers]
    params = {}
    for name, param in base.named_parameters():  # same order on every rank: full_tensor() is a collective
        if ".original_module." in name:  # PEFT's untouched copy of a module to save
            continue
        original = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        full = (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()
        params[original if original in before else name] = {
            "local": list(param.to_local().shape) if hasattr(param, "to_local") else None,
            "full": list(full.shape),
            "trainable": param.requires_grad,
            # lora_B starts at zero: trained means non-zero
            "changed": not torch.equal(before[original], full) if original in before else bool(full.any()),
        }
    report = {
        "fsdp": trainer.is_fsdp_enabled,
        "classes": fsdp_layer_classes(base),
        "units": [isinstance(layer, FSDPModule) for layer in layers],
        "layer_types": [own_class(getattr(layer, "_checkpoint_wrapped_module", layer)) for layer in layers],
        # torch's CheckpointWrapper (class renamed FSDPCheckpointWrapper by fully_shard)
        "checkpointed": [hasattr(layer, "_checkpoint_wrapped_module") for layer in layers],
        "tied": base.lm_head.weight is base.model.language_model.embed_tokens.weight,
        "params": params,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(output_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def fsdp2_unit_runs(tmp_path_factory):
    """Every UNIT_CASES case in one 2-process torchrun group, one after the other (`worker` each); returns the
    folder of the per-case reports and the log."""
    out = tmp_path_factory.mktemp("fsdp2-units")
    return out, run(torchrun(str(Path(__file__)), "--worker", str(out), *UNIT_CASES))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(UNIT_CASES))
def test_fsdp2_units_tied_embeddings_and_stages(fsdp2_unit_runs, case):
    lm, stage, activation_checkpointing = UNIT_CASES[case]
    out, log = fsdp2_unit_runs
    assert DDP_MARK not in log
    ranks = [json.loads((out / case / f"rank{r}.json").read_text()) for r in (0, 1)]
    layer = {"llama": "LlamaDecoderLayer", "qwen3": "Qwen3DecoderLayer"}[lm]
    for report in ranks:
        assert report["fsdp"]
        assert report["layer_types"] == [layer] * 2 + ["SiglipEncoderLayer"] * 2
        assert all(report["units"]), report["units"]  # every decoder and encoder layer is its own FSDP unit
        assert set(report["checkpointed"]) == {activation_checkpointing}  # all layers or none
        assert report["tied"]
    p0, p1 = ranks[0]["params"], ranks[1]["params"]
    for name, info in p0.items():
        rows = info["full"][0] if info["full"] else 1
        assert info["local"] is not None, f"{name} is not sharded (no DTensor)"
        if rows >= 2:  # each rank holds a fraction: its rows, and the two halves make the whole
            assert info["local"][0] < rows and info["local"][0] + p1[name]["local"][0] == rows, (name, info, p1[name])
    trained = {n for n, i in p0.items() if i["changed"]}
    vision = {n for n in p0 if ".vision_tower." in n}
    projector = {n for n in p0 if ".multi_modal_projector." in n}
    llm = {n for n in p0 if ".language_model." in n and "lora_" not in n}
    assert projector <= trained
    if stage == "full":
        assert len(trained) > 0.9 * len(p0)
    else:  # frozen under FSDP2 too: not a bit changed
        assert not trained & (vision | llm), sorted(trained & (vision | llm))[:5]
        assert all(not p0[n]["trainable"] for n in vision | llm)
    if stage == "lora":
        lora_b = {n for n in p0 if "lora_B" in n}
        assert lora_b and lora_b <= {n for n, i in p0.items() if i["trainable"]} and lora_b <= trained
        assert all(p0[n]["local"][0] < p0[n]["full"][0] for n in lora_b if p0[n]["full"][0] >= 2)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:  # --worker OUTPUT_DIR CASE...
    sys.path.insert(0, str(Path(__file__).parent))
    from accelerate.state import AcceleratorState

    for case in sys.argv[3:]:
        worker(case, str(Path(sys.argv[2]) / case))
        AcceleratorState._reset_state()  # the next case's trainer builds its own FSDP plugin (same process group)
