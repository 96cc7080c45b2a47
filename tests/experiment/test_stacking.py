"""Which jobs of a sweep stack (lossbench/experiment/stacking.py): sweeps over the real
conf/, expanded and composed the way `lossbench train -m` checks them before its first job
(sweep_checks.planned_jobs, then each job's config as its launcher composes it)."""

from __future__ import annotations

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from lossbench.experiment.stacking import (MAY_DIFFER, MEMORY_SHARE, Group, group_jobs,
                                           job_configs, job_ranges, replica_bytes,
                                           replicas_that_fit, stack_key)
from lossbench.experiment.sweep_checks import planned_jobs

ALONE_ONLY_ONE = "no other job shares its dataset, model and training settings"


def sweep(*overrides: str):
    """(jobs' overrides, their resolved configs) of `lossbench train -m <overrides>`."""
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        HydraConfig.instance().set_config(config)
        try:
            jobs = planned_jobs(config)
            return jobs, job_configs(config, jobs)
        finally:  # nothing of this sweep stays behind for the next test in this process
            HydraConfig.instance().cfg = None


def grouped(*overrides: str, **options):
    jobs, configs = sweep(*overrides)
    return group_jobs(jobs, configs, **options)


@pytest.fixture(scope="module")
def ten():
    """`loss=ce,gce seed=0,1,2,3,4`: ten jobs."""
    return sweep("loss=ce,gce", "seed=0,1,2,3,4")


def test_two_losses_and_five_seeds_are_one_group_of_ten(ten):
    groups = group_jobs(*ten)
    assert groups == [Group(tuple(range(10)), ("loss", "seed"))]
    assert groups[0].stacked
    assert groups[0].line() == "lossbench: 10 jobs stacked: loss × seed (jobs 0-9)"


def test_a_loss_that_needs_the_model_runs_alone_with_its_reason():
    groups = grouped("loss=ce,adversarial,gce", "seed=0,1")
    # jobs 0-1 ce, 2-3 adversarial, 4-5 gce: the sweep's order
    assert [g.jobs for g in groups] == [(0, 1, 4, 5), (2,), (3,)]
    assert groups[0].varies == ("loss", "seed")
    assert [g.line() for g in groups[1:]] == [
        "lossbench: job 2 runs alone: loss adversarial needs the model",
        "lossbench: job 3 runs alone: loss adversarial needs the model"]


def test_two_datasets_are_two_groups():
    groups = grouped("dataset=iris,wine", "seed=0,1,2")
    assert [(g.jobs, g.varies) for g in groups] == [((0, 1, 2), ("seed",)),
                                                    ((3, 4, 5), ("seed",))]


def test_seeds_of_a_generated_dataset_stack_only_with_its_data_seed_fixed():
    # moons draws its samples with random_state=${coalesce:${data_seed},${seed}}
    assert len(grouped("dataset=moons", "seed=0,1")) == 2
    assert grouped("dataset=moons", "data_seed=7", "seed=0,1") == [Group((0, 1), ("seed",))]


def test_different_batch_sizes_split_and_keep_the_sweeps_numbers():
    groups = grouped("seed=0,1", "trainer.batch_size=32,64")
    # job 0: seed 0 batch 32, job 1: seed 0 batch 64, job 2: seed 1 batch 32, ...
    assert [g.jobs for g in groups] == [(0, 2), (1, 3)]
    assert groups[0].line() == "lossbench: 2 jobs stacked: seed (jobs 0, 2)"


@pytest.mark.parametrize("must_be_equal", ["trainer.epochs=10,20", "model.hidden=[64],[32]",
                                           "dataset.imbalance.kind=none,longtail",
                                           "optimizer=adam,sgd", "trainer.min_steps=0,800"])
def test_what_changes_the_training_itself_splits(must_be_equal):
    groups = grouped(must_be_equal, "seed=0,1")
    assert [g.jobs for g in groups] == [(0, 1), (2, 3)]


@pytest.mark.parametrize("may_differ", ["optimizer.lr=0.001,0.01", "optimizer.weight_decay=0,1e-4",
                                        "trainer.grad_clip=null,1.0", "trainer.patience=5,20",
                                        "loss=ce,gce,sce,mae,label_smoothing",
                                        "logger=none,tensorboard"])
def test_what_a_replica_keeps_as_its_own_stacks(may_differ):
    groups = grouped(may_differ, "seed=0,1")
    key = may_differ.partition("=")[0]
    assert len(groups) == 1 and groups[0].stacked and groups[0].varies == (key, "seed")


def test_noise_rates_stack():
    groups = grouped("dataset.noise.kind=symmetric", "dataset.noise.rate=0.2,0.4")
    assert groups == [Group((0, 1), ("dataset.noise.rate",))]
    assert groups[0].line() == "lossbench: 2 jobs stacked: dataset.noise.rate (jobs 0, 1)"


def test_losses_that_ask_the_model_for_other_outputs_split():
    # binary data: ce needs two logits, bce one (a sigmoid head)
    groups = grouped("dataset=breast_cancer", "loss=ce,bce,sce", "seed=0,1")
    assert [(g.jobs, g.varies) for g in groups] == [((0, 1, 4, 5), ("loss", "seed")),
                                                    ((2, 3), ("seed",))]


def test_logits_and_sigmoid_heads_stack_where_the_data_is_known_not_to_be_binary():
    jobs, configs = sweep("loss=ce,focal", "seed=0,1")  # focal: one-vs-rest sigmoids
    assert [g.jobs for g in group_jobs(jobs, configs)] == [(0, 1), (2, 3)]
    assert group_jobs(jobs, configs, task=lambda cfg: "multiclass") == [
        Group((0, 1, 2, 3), ("loss", "seed"))]
    assert [g.jobs for g in group_jobs(jobs, configs, task=lambda cfg: "binary")] == [
        (0, 1), (2, 3)]


def test_a_cap_of_four_cuts_ten_jobs_into_four_four_and_two(ten):
    groups = group_jobs(*ten, max_replicas=4)
    assert [g.jobs for g in groups] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert all(g.stacked for g in groups)
    assert groups[2].line() == "lossbench: 2 jobs stacked: seed (jobs 8, 9)"


def test_a_cap_leaves_no_job_alone_where_it_can_and_says_why_where_it_cannot(ten):
    jobs, configs = ten
    assert [len(g.jobs) for g in group_jobs(jobs[:9], configs[:9], max_replicas=4)] == [4, 3, 2]
    by_two = group_jobs(jobs[:5], configs[:5], max_replicas=2)
    assert [g.jobs for g in by_two] == [(0, 1), (2, 3), (4,)]
    assert by_two[2].line() == "lossbench: job 4 runs alone: left over by max_replicas=2"
    assert [g.alone for g in group_jobs(jobs[:2], configs[:2], max_replicas=1)] == [
        "max_replicas=1", "max_replicas=1"]
    assert group_jobs(jobs[:2], configs[:2], max_replicas=0)[1].alone == "max_replicas=0"


def test_the_memory_cap_applies_unless_the_users_is_smaller(ten):
    jobs, configs = ten
    assert [len(g.jobs) for g in group_jobs(*ten, fits=lambda cfg: 3)] == [3, 3, 2, 2]
    assert [len(g.jobs) for g in group_jobs(*ten, max_replicas=2, fits=lambda cfg: 3)] == [2] * 5
    assert [len(g.jobs) for g in group_jobs(*ten, max_replicas=8, fits=lambda cfg: None)] == [8, 2]
    assert group_jobs(*ten, fits=lambda cfg: 1)[0].alone == "memory holds one replica"
    assert group_jobs(jobs[:5], configs[:5], fits=lambda cfg: 2)[2].alone == (
        "left over: memory fits 2 replicas")


def test_the_memory_cap_is_that_of_the_groups_largest_replica():
    jobs, configs = sweep("optimizer=sgd", "optimizer.momentum=0,0.9", "seed=0,1")
    asked = []

    def fits(cfg):
        asked.append(cfg.optimizer.momentum)
        return 3 if cfg.optimizer.momentum == 0 else 2  # a momentum buffer per parameter

    groups = group_jobs(jobs, configs, fits=fits)
    assert [g.jobs for g in groups] == [(0, 1), (2, 3)]
    assert sorted(asked) == [0, 0.9]  # once per optimizer setting, not once per job


def test_several_devices_run_alone():
    groups = grouped("trainer.devices=1,2", "seed=0,1")
    assert [g.jobs for g in groups] == [(0, 1), (2,), (3,)]
    assert groups[2].line() == ("lossbench: job 3 runs alone: trainer.devices=2 trains on "
                                "several processes")


def test_the_engines_refusal_is_the_jobs_reason(ten):
    def refuse(cfg):
        return "the engine refuses gce" if cfg.loss._target_.endswith("GCELoss") else None

    groups = group_jobs(*ten, refuse=refuse)
    assert [g.jobs for g in groups] == [(0, 1, 2, 3, 4), (5,), (6,), (7,), (8,), (9,)]
    assert groups[0].varies == ("seed",)  # the loss no longer differs inside the group
    assert {g.alone for g in groups[1:]} == {"the engine refuses gce"}


def test_the_only_job_of_its_key_runs_alone():
    groups = grouped("trainer.batch_size=32,64,128", "seed=0", "loss=ce")
    assert [g.line() for g in groups] == [
        f"lossbench: job {n} runs alone: {ALONE_ONLY_ONE}" for n in range(3)]


def test_a_loss_that_cannot_be_built_runs_alone_so_that_its_group_trains():
    groups = grouped("loss=gce", "loss.q=0.7,-1", "seed=0,1")
    assert [g.jobs for g in groups] == [(0, 1), (2,), (3,)]
    assert groups[1].alone.startswith("loss gce cannot be built (")


def test_a_new_config_key_must_be_equal_until_the_list_says_otherwise(ten):
    groups = grouped("+dataset.new_knob=1,2", "seed=0,1")
    assert [g.jobs for g in groups] == [(0, 1), (2, 3)]
    jobs, configs = ten
    cfg = configs[0].copy()
    with open_dict(cfg):
        cfg.trainer.new_knob = 3
    assert stack_key(cfg) != stack_key(configs[0])
    assert stack_key(configs[1]) == stack_key(configs[0])  # seed 0 and 1


def test_the_list_of_keys_that_may_differ_names_keys_of_the_config(ten):
    from lossbench.results.record import resolved_config

    config = resolved_config(ten[1][0])
    for name in MAY_DIFFER:
        *parents, last = name.split(".")
        node = config
        for part in parents:
            node = node[part]
        assert last == "*" or last in node, name


def test_job_ranges_are_compact_and_a_line_fits_a_terminal():
    assert job_ranges([0, 1, 2, 3, 4, 7]) == "0-4, 7"
    assert job_ranges([3]) == "3"
    assert job_ranges([5, 6, 9, 10, 11]) == "5, 6, 9-11"
    assert job_ranges(list(range(0, 60, 2)), width=20) == "0, 2, 4, 6, 8, 10, …"
    line = Group(tuple(range(0, 200, 2)), ("loss", "dataset.noise.rate", "seed")).line()
    assert len(line) <= 80 and line.endswith(", …)")
    assert line.startswith("lossbench: 100 jobs stacked: loss × dataset.noise.rate × seed "
                           "(jobs 0, 2,")
    assert Group((4, 5)).line() == "lossbench: 2 jobs stacked (jobs 4, 5)"


def test_a_replicas_memory_is_its_weights_gradients_moments_and_activations():
    _, (cfg,) = sweep("model=linear", "optimizer=adam", "trainer.batch_size=128")
    # Linear 64 -> 10: 650 parameters × (weights, grads, 2 Adam moments); its output
    # 128 × 10 twice; the batch 128 × 64; float32
    assert replica_bytes(cfg, (64,), 10) == 4 * (650 * 4 + 2 * 128 * 10 + 128 * 64)
    _, (plain_sgd,) = sweep("model=linear", "optimizer=sgd", "optimizer.momentum=0")
    assert replica_bytes(plain_sgd, (64,), 10) == 4 * (650 * 2 + 2 * 128 * 10 + 128 * 64)


def test_batch_norm_statistics_and_every_layers_output_count():
    _, (cfg,) = sweep("model=mlp", "model.hidden=[32]", "model.batch_norm=true",
                      "optimizer=sgd", "optimizer.momentum=0", "trainer.batch_size=10")
    params = 64 * 32 + 32 + 2 * 32 + 32 * 5 + 5  # linear, BatchNorm's weight and bias, linear
    buffers = 2 * 32 + 1  # running mean and variance, batches seen
    outputs = 10 * (64 + 32 + 32 + 32 + 5)  # flatten, linear, BatchNorm, ReLU, linear
    assert replica_bytes(cfg, (8, 8), 5) == 4 * (params * 2 + buffers + 2 * outputs + 10 * 64)


def test_replicas_that_fit_keep_to_their_share_of_the_memory(ten):
    cfg = ten[1][0]
    one = replica_bytes(cfg, (64,), 10)
    assert replicas_that_fit(cfg, (64,), 10, available=int(10 * one / MEMORY_SHARE)) == 10
    assert replicas_that_fit(cfg, (64,), 10, available=one) == 1  # never fewer than one
    assert replicas_that_fit(cfg, (64,), 10) >= 1  # this machine's own memory


def test_composing_the_jobs_leaves_no_job_config_behind():
    """A job's config must not stay in HydraConfig after composing: an in-process `resume=` (the
    Python API, the tests) reads the overrides it holds and would refuse them as its own."""
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(
            "config", ["loss=ce,gce"], run_mode=RunMode.MULTIRUN, with_log_configuration=False)
        assert HydraConfig.instance().cfg is None
        configs = job_configs(config, planned_jobs(config))
        assert [c.loss._target_ for c in configs][0] != configs[1].loss._target_
        assert HydraConfig.instance().cfg is None
        HydraConfig.instance().set_config(config)
        job_configs(config, planned_jobs(config))
        assert HydraConfig.instance().cfg.hydra.overrides.task == ["loss=ce,gce"]
        HydraConfig.instance().cfg = None
