"""Work sharded over processes under torchrun (gloo on this CPU): prediction and preprocessing give the same files
as one process, every item is done exactly once, and rank 0 alone reports. The fast suite runs the plumbing under
two processes; the end-to-end runs, which load LiteMedSAM in every process, are marked slow."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from pipeline_runs import assert_same_agreement
from synthetic_raw import make_3d_ring
from toy_model import shared_foundation, toy_image, write_model_folder

from automedsam import distributed
from automedsam import plans as plans_module
from automedsam.conversion import convert_folder
from automedsam.errors import AutomedsamError
from automedsam.io import Geometry, write_image
from automedsam.inference import predict
from automedsam.inference.agreement import AGREEMENT_FILE
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.training.loop import epoch_order, process_batch_size

VENV_BIN = Path(sys.executable).parent
PROCESSES = 2
TORCHRUN_TIMEOUT_S = 300


def torchrun(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 <venv script> args` on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(VENV_BIN / script), *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=TORCHRUN_TIMEOUT_S)


def child_output(done: subprocess.CompletedProcess) -> str:
    """What the processes printed: torchrun's own report of a failed process (a traceback of its ChildFailedError)
    left out, since torchrun prints it whatever the processes do."""
    report = re.compile(r"Traceback \(most recent call last\):\n(?:  .*\n)*\S*ChildFailedError")
    return report.sub("", done.stdout + done.stderr)


@contextmanager
def threads_of_one_rank() -> Iterator[None]:
    """The torch thread count each of the PROCESSES ranks uses here: CPU results depend (in the last bits) on the
    number of threads, so the one-process reference runs with the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(distributed.cpu_threads_per_process(distributed.DistributedContext(
        rank=0, world_size=PROCESSES, local_rank=0, local_world_size=PROCESSES)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def files_under(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_same_files(expected: Path, actual: Path) -> None:
    """Same file names; .npz compared array by array (zip members carry write times), everything else by bytes."""
    reference, sharded = files_under(expected), files_under(actual)
    assert sorted(sharded) == sorted(reference)
    for name, path in reference.items():
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as want, np.load(sharded[name], allow_pickle=False) as got:
                assert sorted(got.files) == sorted(want.files), name
                for key in want.files:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}:{key}")
        elif name == AGREEMENT_FILE:
            assert_same_agreement(path, sharded[name])
        else:
            assert sharded[name].read_bytes() == path.read_bytes(), name


# ---------------------------------------------------------------- helpers, in one process


def test_shards_cover_every_item_once_in_index_order() -> None:
    items = list("abcdefg")
    shares = [distributed.shard(items, distributed.DistributedContext(rank, 3, rank, 3)) for rank in range(3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert distributed.shard(items, distributed.DistributedContext()) == items
    assert distributed.shard([], distributed.DistributedContext(1, 2, 1, 2)) == []


def test_context_comes_from_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    alone = distributed.context_from_environment()
    assert (alone.rank, alone.world_size, alone.is_distributed, alone.is_main) == (0, 1, False, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    context = distributed.context_from_environment()
    assert (context.rank, context.world_size, context.local_rank, context.local_world_size) == (3, 4, 1, 2)
    assert context.is_distributed and not context.is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(AutomedsamError, match="RANK=4 / WORLD_SIZE=4"):
        distributed.context_from_environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(AutomedsamError, match="must be integers"):
        distributed.context_from_environment()


def test_cpu_cores_are_split_between_the_processes_of_a_machine() -> None:
    cores = len(os.sched_getaffinity(0))
    split = [distributed.cpu_threads_per_process(distributed.DistributedContext(0, n, 0, n)) for n in (1, 2, 64)]
    assert split == [cores, max(1, cores // 2), max(1, cores // 64)]


def test_a_single_process_joins_no_group_and_keeps_its_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    context, device = distributed.setup("cpu")
    assert not context.is_distributed and not context.owns_group and device == torch.device("cpu")
    assert not torch.distributed.is_initialized() and torch.get_num_threads() == threads
    assert distributed.sum_counts([2, 5], context, device) == [2, 5]
    distributed.barrier(context)
    distributed.teardown(context)
    with pytest.raises(AutomedsamError, match="inside"), distributed.joined("cpu") as (context, device):
        assert not context.is_distributed and device == torch.device("cpu")
        raise AutomedsamError("inside")


def test_the_planned_batch_is_the_global_batch_split_evenly_over_the_processes() -> None:
    """HC18's folds: 8 training samples, batch 4. Every step trains 4 samples in all, each once per epoch."""
    for world_size in (1, 2, 4):
        contexts = [distributed.DistributedContext(rank, world_size, rank, world_size) for rank in range(world_size)]
        share = process_batch_size(4, 8, contexts[0])
        orders = [epoch_order(8, 3, 0, context, batch_size=4) for context in contexts]
        steps = [[order[start:start + share] for start in range(0, len(order), share)] for order in orders]
        assert len({len(batches) for batches in steps}) == 1  # DDP: every process takes every step
        assert [sum(len(batches[step]) for batches in steps) for step in range(len(steps[0]))] == [4, 4]
        assert sorted(index for order in orders for index in order) == list(range(8))
    # ten samples on four processes: two steps of 4, and the last 2 (fewer than the processes) wait for another epoch
    orders = [epoch_order(10, 3, 0, distributed.DistributedContext(rank, 4, rank, 4), batch_size=4)
              for rank in range(4)]
    assert [len(order) for order in orders] == [2, 2, 2, 2] and len({i for order in orders for i in order}) == 8


@pytest.mark.parametrize("world_size", [3, 8])
def test_a_process_count_that_cannot_split_the_planned_batch_is_refused(world_size: int) -> None:
    context = distributed.DistributedContext(0, world_size, 0, world_size)
    refusal = f"planned batch of 4 .* runs on 1, 2, 4 process\\(es\\), not {world_size}"
    with pytest.raises(AutomedsamError, match=refusal):
        process_batch_size(4, 8, context)
    with pytest.raises(AutomedsamError, match="runs on 1, 2 process"):  # of four processes, two would have no sample
        process_batch_size(4, 2, distributed.DistributedContext(0, 4, 0, 4))


def test_one_process_trains_in_the_order_and_batches_it_always_did() -> None:
    """torch's DistributedSampler order of a world of one, which a run stopped under an earlier version resumes in."""
    alone = distributed.DistributedContext()
    for num_samples, epoch, seed in ((8, 1, 0), (9, 7, 12345)):
        sampler = torch.utils.data.DistributedSampler(range(num_samples), num_replicas=1, rank=0, seed=seed)
        sampler.set_epoch(epoch)
        assert epoch_order(num_samples, epoch, seed, alone, batch_size=4) == list(sampler)
    assert process_batch_size(4, 9, alone) == 4 and process_batch_size(4, 0, alone) == 4


@pytest.mark.parametrize("collective, call", [
    ("all_reduce", lambda context: distributed.all_reduce_sum(torch.zeros(1), context)),
    ("barrier", distributed.barrier),
    ("all_gather_object", lambda context: distributed.same_on_every_rank([1], context))])
def test_a_backend_failure_in_a_collective_names_the_backend_s_reason(monkeypatch: pytest.MonkeyPatch, collective,
                                                                       call) -> None:
    """Where NCCL fails alike in every process (its network at the first barrier), each stopped with 'another
    process stopped' only, and no process printed the real error."""
    nccl = ("NCCL error in ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for "
            "details)")

    def fail(*args, **kwargs):
        raise RuntimeError(nccl)

    monkeypatch.setattr(torch.distributed, collective, fail)
    with pytest.raises(AutomedsamError) as error:
        call(distributed.DistributedContext(0, 2, 0, 2))
    assert str(error.value).startswith(distributed.PEER_STOPPED) and nccl in str(error.value)


def test_plan_only_plans_on_the_device_asked_for(roots, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--plan-only builds the frozen model too (label statistics, --select), but joined on the automatic device."""
    from automedsam.planning import plan_and_preprocess as module

    asked: list[object] = []
    joined = distributed.joined
    monkeypatch.setattr(module.distributed, "joined", lambda device: (asked.append(device), joined(device))[1])
    folder = tmp_path / "images"
    for index in range(4):
        write_image(folder / f"scan{index}.png", np.full((20, 30), index * 40, np.uint8), Geometry.natural())
    convert_folder(folder, dataset_id=8, name="Plan", label_names=["head"])
    plan_and_preprocess(8, shots=2, folds=2, num_workers=1, plan_only=True, device="cpu", progress=False)
    assert asked == ["cpu"]


def test_two_processes_join_share_sum_and_average_gradients_under_torchrun(tmp_path: Path) -> None:
    """What every sharded command and DDP training rely on, at the cost of two bare processes: each joins the gloo
    group as every command does (`joined`), takes its share of a list, waits at a barrier, gets the counts summed
    over both, has a wrapped module's gradients averaged, and leaves the group."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        import torch
        from automedsam import distributed
        with distributed.joined("cpu") as (context, device):
            group = torch.distributed.group.WORLD
            mine = distributed.shard(list("abcde"), context)
            distributed.barrier(context)
            totals = distributed.sum_counts([len(mine), 1], context, device)
            alike = (distributed.same_on_every_rank(list("ab"), context),
                     distributed.same_on_every_rank([context.rank], context))
            module = distributed.wrap(torch.nn.Linear(1, 1, bias=False), context, device)
            module(torch.full((1, 1), float(context.rank + 1))).sum().backward()
            gradient = module.module.weight.grad.item()
            del module  # as in the commands, where it is a function's local: DDP's reducer holds the group, and one
            # destroyed at interpreter exit, after the group, can abort the process (SIGABRT, "terminate called ...")
            report = (f"{context.rank}/{context.world_size} group={context.owns_group} {''.join(mine)} {totals} "
                      f"{gradient} {alike} threads={torch.get_num_threads()}")
        assert not torch.distributed.is_initialized()
        report += f" held={sys.getrefcount(group) - 2}"  # references to the group left beside `group` (and the call's)
        Path(sys.argv[1], f"rank{context.rank}.txt").write_text(report)  # one file each: stdout lines interleave
    """))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(script), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})  # where it aborted
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(PROCESSES)]
    threads = distributed.cpu_threads_per_process(distributed.DistributedContext(0, PROCESSES, 0, PROCESSES))
    # held=0: nothing keeps the group past `joined`, so it is not destroyed at interpreter exit, where gloo can abort
    assert reports == [f"0/2 group=True ace [5, 2] 1.5 (True, False) threads={threads} held=0",
                       f"1/2 group=True bd [5, 2] 1.5 (True, False) threads={threads} held=0"]


def test_a_process_whose_peer_stopped_on_an_error_stops_with_one_line_pointing_at_it(tmp_path: Path) -> None:
    """Rank 0 stops on an error of its own; rank 1, at each collective in turn and then leaving the group, gets one
    AutomedsamError saying so instead of gloo's 'Connection closed by peer' RuntimeError."""
    script = tmp_path / "peers.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from automedsam import distributed
        from automedsam.errors import AutomedsamError

        def attempt(name, collective):
            try:
                collective()
            except AutomedsamError as error:
                return f"{name}: {error}"
            return f"{name}: passed"

        stopped = []
        try:
            with distributed.joined("cpu") as (context, device):
                if context.rank == 0:
                    raise AutomedsamError("rank 0's own error")
                stopped += [attempt("barrier", lambda: distributed.barrier(context)),
                            attempt("sum_counts", lambda: distributed.sum_counts([1], context, device)),
                            attempt("same_on_every_rank", lambda: distributed.same_on_every_rank([1], context))]
        except AutomedsamError as error:
            stopped.append(f"leaving: {error}")
        Path(sys.argv[1], f"rank{os.environ['RANK']}.txt").write_text("\\n".join(stopped))
    """))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(script), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "leaving: rank 0's own error"
    stopped = (tmp_path / "rank1.txt").read_text().splitlines()
    assert [line.split(": ", 1)[0] for line in stopped] == ["barrier", "sum_counts", "same_on_every_rank", "leaving"]
    assert all(line.split(": ", 1)[1].startswith(distributed.PEER_STOPPED) for line in stopped)
    assert stopped[0] == f"barrier: {distributed.PEER_STOPPED}", "a peer gone is said without the backend's noise"


def test_an_error_of_rank_0_alone_is_printed_once_with_no_traceback_from_the_others(roots, tmp_path: Path) -> None:
    """Rank 0 refuses the missing weights file after fingerprinting while rank 1 waits at a barrier: the user sees
    that error, and from rank 1 no traceback of gloo's lost connection."""
    folder = tmp_path / "images"
    for index in range(4):
        write_image(folder / f"scan{index}.png", np.full((20, 30), index * 40, np.uint8), Geometry.natural())
    convert_folder(folder, dataset_id=9, name="Peers", label_names=["head"])
    done = torchrun("automedsam_plan_and_preprocess", "-d", "9", "--shots", "3", "--folds", "2", "--device", "cpu",
                    "--foundation-checkpoint", str(tmp_path / "missing.pth"), env={"OMP_NUM_THREADS": "1"})
    printed = child_output(done)
    assert done.returncode != 0
    assert printed.count(f"--foundation-checkpoint {tmp_path / 'missing.pth'} does not exist") == 1, printed
    assert "Traceback" not in printed and "Connection closed" not in printed, printed


def test_every_rank_refuses_to_predict_when_the_processes_chose_different_folds(toy_inputs, tmp_path: Path) -> None:
    """Each process picks the finished folds itself before joining: rank 1 here sees fold 1 unfinished (as when it
    finishes while torchrun starts them), and every process refuses instead of mixing two ensembles in one folder."""
    script = tmp_path / "folds.py"
    script.write_text(textwrap.dedent("""
        import dataclasses, os, sys
        from pathlib import Path
        from automedsam.errors import AutomedsamError
        from automedsam.inference import run

        images, output, model, reports = sys.argv[1:]
        rank = os.environ["RANK"]
        opened = run.open_model_folder
        if rank == "1":  # fold 1 not finished yet when this process looked
            run.open_model_folder = lambda *args, **kwargs: dataclasses.replace(
                opened(*args, **kwargs), folds=(0,), left_out=(1,))
        try:
            run.predict(images, output, model_folder=model, device="cpu", show_progress=False)
            outcome = "predicted"
        except AutomedsamError as error:
            outcome = str(error)
        Path(reports, f"rank{rank}.txt").write_text(outcome)
    """))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(script), str(toy_inputs["images"]), str(tmp_path / "out"), str(toy_inputs["model"]), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(PROCESSES):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith(
            f"The processes chose different folds or checkpoints of {toy_inputs['model']}"), rank
    assert not list((tmp_path / "out").glob("*.png"))


def test_under_torchrun_no_process_preprocesses_an_interactive_dataset_awaiting_its_boxes(roots, tmp_path: Path):
    """Rank 0 skipped preprocessing while drawn samples awaited their boxes; rank 1 wrote them without boxes alone
    and lost rank 0 at its next barrier (rc 1 with gloo; with NCCL a hang until the group timeout)."""
    folder = tmp_path / "images"
    for index in range(6):
        write_image(folder / f"scan{index}.png", (np.random.default_rng(index).random((40, 50)) * 255).astype(
            np.uint8), Geometry.natural())
    convert_folder(folder, dataset_id=7, name="Scans", label_names=["head"])
    done = torchrun("automedsam_plan_and_preprocess", "-d", "7", "--shots", "3", "--folds", "2", "-np", "1",
                    "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "still to annotate" in done.stdout
    assert not (roots["preprocessed"] / "Dataset007_Scans" / "samples").exists()


# ---------------------------------------------------------------- two processes against one


@pytest.fixture
def toy_inputs(tmp_path: Path) -> dict[str, Path]:
    """The toy two-fold model and three inputs: two PNGs and a two-slice NIfTI volume."""
    foundation = shared_foundation()
    model_dir = write_model_folder(tmp_path / "results", foundation)
    images = tmp_path / "images"
    images.mkdir()
    for seed in (0, 1):
        Image.fromarray(toy_image(seed)).save(images / f"scan{seed}_0000.png")
    volume = sitk.GetImageFromArray(np.stack([toy_image(2), toy_image(3)]).astype(np.int16))
    volume.SetSpacing((0.7, 0.8, 5.0))
    sitk.WriteImage(volume, str(images / "volume_0000.nii.gz"))
    return {"model": model_dir, "images": images}


@pytest.mark.slow
def test_two_process_prediction_writes_what_one_process_writes(toy_inputs, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: shared_foundation())
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    with threads_of_one_rank():
        summary = predict(toy_inputs["images"], single, model_folder=toy_inputs["model"], save_probabilities=True,
                          device="cpu", show_progress=False)
    assert summary.written == 3
    sharded.mkdir()
    for name in ("scan0.png", "scan0.npz", "scan0.json", AGREEMENT_FILE):  # one case finished: skipped, not redone
        (sharded / name).write_bytes((single / name).read_bytes())
    done = torchrun("automedsam_predict", "-i", str(toy_inputs["images"]), "-o", str(sharded), "-m",
                    str(toy_inputs["model"]), "--save-probabilities", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if line.startswith("Wrote")]
    assert len(reports) == 1 and reports[0].startswith("Wrote 2 segmentation(s)") and "skipped 1" in reports[0]
    assert_same_files(single, sharded)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sharded / "volume.nii.gz")))
    assert labels.shape == (2, 60, 80) and set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.slow
def test_two_process_preprocessing_writes_what_one_process_writes(roots, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned once with one view per labelled sample (each embedding is a LiteMedSAM pass, in both runs), then
    preprocessed from those plans by this process and by two processes under torchrun: rank 0 checks the stored
    files while the other waits, then each writes and embeds its share."""
    make_3d_ring(roots["raw"])
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: shared_foundation())
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    monkeypatch.setenv("AUTOMEDSAM_PREPROCESSED", str(single))
    # fp32 planned by hand: the torchrun processes see this CPU's bf16 flags, which the suite hides from this one
    planned = plan_and_preprocess("2", shots=4, num_workers=1, plan_only=True, precision="fp32", progress=False).out_dir
    plans = json.loads((planned / "plans.json").read_text())
    plans["augmentation"]["views"] = plans["augmentation"]["views"][:1]
    (planned / "plans.json").write_text(json.dumps(plans))
    shutil.copytree(planned, sharded / planned.name)
    total = 4 * 2  # the labelled samples and their view
    with threads_of_one_rank():
        summary = plan_and_preprocess("2", preprocess_only=True, num_workers=1, device="cpu", progress=False)
    assert summary.preprocessing["embeddings_computed"] == total
    done = torchrun("automedsam_plan_and_preprocess", "-d", "2", "--preprocess-only", "-np", "1", "--device", "cpu",
                    env={"AUTOMEDSAM_PREPROCESSED": str(sharded)})
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if "labelled samples" in line]
    assert len(reports) == 1 and f"{total}/{total} samples written, {total}/{total} embeddings computed" in reports[0]
    assert_same_files(single, sharded)
    stored = files_under(sharded / "Dataset002_Heart" / "embeddings" / "litemedsam")
    embeddings = {name[: -len(".npy")] for name in stored if name.endswith(".npy")}
    assert len(embeddings) == total and set(stored) == {f"{sid}{suffix}" for sid in embeddings
                                                        for suffix in (".npy", ".image")}, "each with its image digest"
