"""pretrain's core on small real inputs: the per-document attention of the packed model,
the step sampler, the schedule, the batch checks and the checkpoint finder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stages.core.errors import ConfigError
from stages.pretrain.config import ModelConfig, PretrainConfig
from stages.pretrain.loop import lr_lambda
from stages.pretrain.model import build_model, count_parameters, flops_per_token
from stages.pretrain.sampler import StepSampler, eval_indices
from stages.pretrain.stage import check_batch, latest_checkpoint
from stages.tokenize.packed import segment_ids


def test_packed_documents_do_not_attend_across_the_boundary():
    model = build_model(ModelConfig(preset="cpu-micro"), vocab_size=300, seq_len=32, pad_id=0, eos_id=1, seed=3)
    model.eval()
    rng = np.random.default_rng(0)
    a, b = rng.integers(2, 300, size=5), rng.integers(2, 300, size=7)
    packed = torch.tensor(np.concatenate([a, b]))[None]
    _, positions = segment_ids(np.array([5, 12]), start=0, length=12)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=torch.from_numpy(positions)[None]).logits[0]
        alone = model(input_ids=torch.tensor(b)[None]).logits[0]
        leaky = model(input_ids=packed).logits[0]  # plain causal attention, positions 0..11
    # with reset positions the second document sees only itself, exactly as if alone
    assert torch.allclose(together[5:], alone, atol=1e-5)
    assert not torch.allclose(leaky[5:], alone, atol=1e-3)


def test_sampler_ranks_are_disjoint_and_an_epoch_sees_every_sequence_once():
    n, global_batch, world = 96, 8, 2
    sampler = StepSampler(n, global_batch, seed=5)
    seen = []
    for step in range(n // global_batch):
        parts = [sampler.rank_indices(step, r, world) for r in range(world)]
        assert not set(parts[0]) & set(parts[1])
        assert np.array_equal(np.concatenate(parts), sampler.global_indices(step))  # same batch, any world size
        seen += [int(i) for p in parts for i in p]
    assert sorted(seen) == list(range(n))
    # the next epoch is a different order of the same sequences
    nxt = np.concatenate([sampler.global_indices(s) for s in range(n // global_batch, 2 * n // global_batch)])
    assert sorted(nxt.tolist()) == list(range(n)) and nxt.tolist() != seen
    assert np.array_equal(StepSampler(n, global_batch, 5).global_indices(3), sampler.global_indices(3))


def test_eval_batches_are_equal_in_number_on_every_rank():
    per_rank = [eval_indices(num_sequences=21, wanted=64, rank=r, world=2, micro=4) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(warmup=10, total=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_batch_and_model_checks_name_the_field():
    with pytest.raises(ConfigError, match="global_batch_tokens"):
        check_batch(PretrainConfig(global_batch_tokens=1000), seq_len=256)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        check_batch(PretrainConfig(global_batch_tokens=256 * 12, micro_batch_size=8), seq_len=256)
    check_batch(PretrainConfig(global_batch_tokens=256 * 16, micro_batch_size=8), seq_len=256)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(preset="custom", hidden_size=64, num_heads=4, num_kv_heads=3)


def test_flops_and_parameter_count_of_the_tiny_model():
    model = build_model(ModelConfig(preset="cpu-tiny"), vocab_size=8192, seq_len=256, pad_id=0, eos_id=1, seed=0)
    n = count_parameters(model)
    assert 1.5e6 < n < 2.5e6  # tied embeddings: 8192 x 128 counted once
    assert flops_per_token(n, 4, 128, 256) == 6 * n + 12 * 4 * 128 * 256


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    """Ray Train copies checkpoint folders file by file: a folder with a rank's list missing, a file shorter than
    listed, or a marker cut mid-write is not resumed from."""
    from stages.pretrain.loop import write_file_list

    def make(name, step, world=2):
        folder = tmp_path / name
        tag = folder / f"step{step:07d}"
        tag.mkdir(parents=True)
        for r in range(world):
            (tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x" * 100)
        (folder / "lmforge_checkpoint.json").write_text(json.dumps(
            {"step": step, "tag": tag.name, "world_size": world, "zero_stage": 2, "final": False}))
        for r in range(world):
            write_file_list(folder, r)
        return folder

    good = make("checkpoint_a", 4)
    (make("checkpoint_b", 8) / "lmforge_files_rank1.json").unlink()  # rank 1's copy never finished
    cut = make("checkpoint_c", 12)
    (cut / "step0000012" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 40)
    (make("checkpoint_d", 16) / "lmforge_checkpoint.json").write_text("")  # the marker mid-copy
    assert latest_checkpoint(tmp_path, world=2) == str(good)
    assert latest_checkpoint(tmp_path, world=4) is None  # written by another world size
