"""Writes that stop part way: a quota reached while writing is reported like a full disk, and a checkpoint whose
weights were written without their metadata does not count as a finished fold anywhere."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from automedsam import checkpoint
from automedsam.annotation.retraining import _bring_back
from automedsam.cli.common import run_app
from automedsam.errors import AutomedsamError
from automedsam.files import copy_file, remove_tree, save_json, save_npy
from automedsam.inference.model_folder import open_model_folder
from automedsam.io import Geometry, read_segmentation, write_segmentation
from automedsam.planning import preprocessing
from automedsam.plans import Plans
from automedsam.trained_models import keep_previous
from tests.toy_model import toy_plans

INCOMPLETE = "the file could not be written completely"
# What the writers raise, without an errno, when a quota stops a write (seen under RLIMIT_FSIZE, as in the test below)
NUMPY_SHORT_WRITE = OSError("1048576 requested and 49936 written")
TORCH_SHORT_WRITES = (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832 vs 726"),
                      RuntimeError("basic_ios::clear: iostream error"),
                      RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
WEIGHTS = {"1.weight": torch.ones(3)}


@pytest.fixture
def plenty_of_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quota stops writes on a disk with space left: the space left cannot tell it."""
    monkeypatch.setattr("automedsam.files.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**13, 0, 10**12))


def failing_after_a_part(exc: BaseException):
    """A writer that writes a few bytes of its file, then raises `exc`, as numpy and torch do on a quota."""
    def write(obj, path, *args, **kwargs):
        if hasattr(path, "write"):  # torch.save is given an open file
            path.write(b"part")
        else:
            Path(path).write_bytes(b"part")
        raise exc
    return write


def test_a_quota_reached_while_writing_an_embedding_is_reported(tmp_path, monkeypatch, plenty_of_space):
    """numpy's tofile raises OSError("N requested and M written") without an errno: a traceback on a quota."""
    monkeypatch.setattr("automedsam.files.np.save", lambda path, array, **kwargs:
                        failing_after_a_part(NUMPY_SHORT_WRITE)(array, path))
    with pytest.raises(AutomedsamError, match=rf"Cannot write .*e\.npy: {INCOMPLETE} \(953674 MiB free"):
        save_npy(tmp_path / "embeddings" / "e.npy", np.zeros((4, 4), np.float16))
    assert not any((tmp_path / "embeddings").iterdir())


@pytest.mark.parametrize("exc", TORCH_SHORT_WRITES, ids=["position", "stream", "miniz"])
def test_a_quota_reached_while_writing_a_checkpoint_is_reported(tmp_path, monkeypatch, plenty_of_space, exc):
    """torch.save raises a plain RuntimeError on a short write: a traceback on a quota."""
    monkeypatch.setattr("automedsam.checkpoint.torch.save", failing_after_a_part(exc))
    with pytest.raises(AutomedsamError, match=rf"Cannot write .*checkpoint_final\.pt: {INCOMPLETE}"):
        checkpoint.save_checkpoint(tmp_path, "final", WEIGHTS, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [OSError("unsupported array layout"), RuntimeError("cannot pickle 'generator'")])
def test_a_writer_error_that_is_no_short_write_stays_what_it_is(tmp_path, monkeypatch, plenty_of_space, exc):
    """A bug is not reported as a full disk."""
    monkeypatch.setattr("automedsam.checkpoint.torch.save", failing_after_a_part(exc))
    with pytest.raises(type(exc), match=str(exc)):
        checkpoint.save_checkpoint(tmp_path, "final", WEIGHTS, {})
    assert list(tmp_path.iterdir()) == []


def test_the_installed_writers_short_writes_are_recognised(tmp_path):
    """The messages matched are those of the numpy and torch installed: a file size limit stops the writes as a quota
    does, on a disk with space left."""
    script = textwrap.dedent(f"""
        import resource, signal, numpy as np, torch
        from pathlib import Path
        from automedsam.checkpoint import save_checkpoint
        from automedsam.errors import AutomedsamError
        from automedsam.files import save_npy
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        for name, write in (("npy", lambda: save_npy(Path({str(tmp_path)!r}) / "e.npy", np.zeros(300_000))),
                            ("pt", lambda: save_checkpoint(Path({str(tmp_path)!r}), "final",
                                                           {{"1.w": torch.zeros(300_000)}}, {{}}))):
            try:
                write()
            except AutomedsamError as error:
                print(name, "reported" if "{INCOMPLETE}" in str(error) else error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[:2] == ["npy reported", "pt reported"], done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def stopped_between_weights_and_metadata(fold_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold whose training saved its last state, then stopped (Ctrl-C) after checkpoint_final.pt, before its
    .json: `automedsam_train --c` finishes it."""
    def ctrl_c(path: Path, obj: object) -> None:
        raise KeyboardInterrupt

    checkpoint.save_training_state(fold_dir, 1, WEIGHTS, {}, {}, {})
    with monkeypatch.context() as patch:
        patch.setattr("automedsam.checkpoint.save_json", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_checkpoint(fold_dir, "final", WEIGHTS, {})
    assert checkpoint.weights_path(fold_dir, "final").is_file()


def test_a_fold_stopped_while_saving_its_final_checkpoint_is_not_predicted_with(tmp_path, monkeypatch):
    """Training counted it unfinished (`--c` redoes it), prediction used it, without the metadata that records the
    foundation weights it trained with. A fold installed from an archive (weights, no metadata, no resume file) stays
    finished."""
    model_dir = tmp_path / "Dataset001_Toy" / "default__toyPlans"
    save_json(model_dir / "plans.json", toy_plans())
    checkpoint.save_checkpoint(model_dir / "fold_0", "final", WEIGHTS, {})
    stopped_between_weights_and_metadata(model_dir / "fold_1", monkeypatch)
    installed = model_dir / "fold_2"
    checkpoint.save_checkpoint(installed, "final", WEIGHTS, {})
    checkpoint.metadata_path(installed, "final").unlink()
    folder = open_model_folder(model_dir)
    assert (folder.folds, folder.left_out) == ((0, 2), (1,))
    with pytest.raises(AutomedsamError, match=r"Fold 1 of .* has checkpoint_final\.pt but not its checkpoint_final"
                                              r"\.json.*folds with a complete one: 0, 2\)\. Continue it with "
                                              r"`automedsam_train 001 fold1 --c`"):
        open_model_folder(model_dir, folds=[1])
    for fold in (0, 2):
        checkpoint.weights_path(model_dir / f"fold_{fold}", "final").unlink()
    with pytest.raises(AutomedsamError, match=r"has no fold with checkpoint_final\.pt and its checkpoint_final\.json"):
        open_model_folder(model_dir)


def test_a_train_stopped_while_saving_a_final_checkpoint_brings_the_previous_model_back(tmp_path, monkeypatch):
    """The annotation page kept the new model, as if every fold had finished."""
    preprocessed, model = tmp_path / "preprocessed", tmp_path / "results" / "Dataset011_Toys" / "default__toyPlans"
    preprocessed.mkdir()
    (preprocessed / "splits.json").write_text(json.dumps({"seed": 0, "shots": 2, "labelled": ["a", "b"], "folds": [
        {"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}]}))
    save_json(model / "plans.json", {})
    kept = {"model": model, "previous": keep_previous(model)}
    save_json(model / "plans.json", {})
    checkpoint.save_checkpoint(model / "fold_0", "final", WEIGHTS, {})
    stopped_between_weights_and_metadata(model / "fold_1", monkeypatch)
    message = _bring_back(SimpleNamespace(preprocessed_dir=preprocessed), kept, lambda line, live=False: None)
    assert message is not None and message.startswith("The model trained before is back in place")
    assert not (model / "fold_0").exists(), "the model trained before, without folds, is back"


def refusing_to_delete(monkeypatch: pytest.MonkeyPatch, name: str, error_number: int) -> None:
    """os.unlink refuses the file `name` as the file system would, naming it as shutil.rmtree's calls do: bare."""
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(path) == name:
            raise OSError(error_number, os.strerror(error_number), os.path.basename(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize("error_number", [errno.EACCES, errno.EROFS])
def test_a_folder_that_cannot_be_deleted_is_named_with_the_entry_refused(tmp_path, monkeypatch, error_number):
    """shutil.rmtree said "Permission denied: 'e.npy'" (no folder), and a read-only disk ended in a traceback."""
    folder = tmp_path / "stale"
    save_npy(folder / "inner" / "e.npy", np.zeros(2))
    refusing_to_delete(monkeypatch, "e.npy", error_number)
    with pytest.raises(AutomedsamError) as refused:
        remove_tree(folder)
    assert str(refused.value) == (f"Cannot delete {folder} ({folder / 'inner' / 'e.npy'}): "
                                  f"{os.strerror(error_number)}. Choose a location you can write to, or change its "
                                  "permissions, then run the command again.")


@pytest.mark.parametrize("stale", ["samples", "embeddings"])
def test_stale_samples_or_embeddings_that_cannot_be_deleted_are_named_with_their_folder(tmp_path, monkeypatch, stale):
    out, plans = tmp_path / "Dataset001_Toy", Plans(toy_plans())
    folder = out / "samples" if stale == "samples" else out / "embeddings" / "litemedsam"
    save_npy(folder / "a.npy", np.zeros(2))
    save_json(out / preprocessing.STATE_FILE, {"samples_key": "older plans", "embeddings": {"litemedsam": "older"}})
    refusing_to_delete(monkeypatch, "a.npy", errno.EROFS)
    with pytest.raises(AutomedsamError, match=re.escape(f"Cannot delete {folder} ({folder / 'a.npy'}): Read-only")):
        if stale == "samples":
            preprocessing._clear_stale_samples(out, plans, ["a"], [])
        else:
            preprocessing.clear_stale_embeddings(out, plans)


def failing_app(error: Exception):
    def app() -> None:
        raise error
    return app


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.png"),
     "Error: Cannot write /mnt/ro/out.png: Read-only file system. Choose a location you can write to, then run"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.png"),
     "Error: Cannot write /data/out.png: No space left on device. Free some space or choose another location, then"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"),
     "Error: Cannot write a file: Disk quota exceeded. Free some space or choose another location, then"),
], ids=["read-only", "full", "quota"])
def test_a_read_only_or_full_disk_met_outside_the_writers_ends_with_one_message(error, expected, capsys):
    """Only PermissionError was the user's: a read-only disk (a deletion, a rename) ended with a traceback."""
    with pytest.raises(SystemExit) as ended:
        run_app(failing_app(error))
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2 and expected in err and "Traceback" not in err


def test_a_refused_name_relative_to_an_open_folder_is_not_placed_in_the_current_folder(tmp_path, monkeypatch,
                                                                                      capsys):
    """A call in an open folder (os.open with dir_fd, shutil.rmtree's own) names the bare entry: it was shown in the
    current folder, where no such file is."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:
        run_app(failing_app(PermissionError(errno.EACCES, "Permission denied", "e.npy")))
    err = " ".join(capsys.readouterr().err.split())
    assert ended.value.code == 2 and "Error: Permission denied for e.npy: this user may not read" in err, err
    assert str(tmp_path) not in err, err


def test_another_os_error_keeps_its_traceback():
    with pytest.raises(OSError, match="Input/output error"):
        run_app(failing_app(OSError(errno.EIO, "Input/output error", "/data/out.png")))


@pytest.mark.parametrize("name", ["a" * 246 + ".png", "é" * 121 + "_0000.png"], ids=["ascii", "two-byte"])
def test_a_file_whose_name_is_near_the_limit_of_255_bytes_is_written(tmp_path, name):
    """The temporary file added 18 bytes and the suffix to the whole name: "File name too long"."""
    assert 250 <= len(name.encode()) <= 255
    write_segmentation(tmp_path / name, np.eye(4, dtype=np.uint8), Geometry.natural())
    save_json(tmp_path / f"{name[:-4]}.json", {})
    assert np.array_equal(read_segmentation(tmp_path / name)[0], np.eye(4))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, f"{name[:-4]}.json"])


def test_an_output_folder_name_too_long_is_named_not_blamed_on_an_input(tmp_path):
    """A 300-character -o folder was reported as "Rename the input it is named after": the user's own folder name
    was at fault."""
    folder = "o" * 300
    with pytest.raises(AutomedsamError) as error:
        save_json(tmp_path / folder / "summary.json", {})
    message = str(error.value)
    assert message.startswith(f"Cannot write {tmp_path / folder / 'summary.json'}: the file name is too long for the "
                              f"file system: the name {'o' * 40}... is 300 bytes, more than the 255 a file system "
                              "takes. Shorten that name in the path you gave"), message


def test_a_two_byte_name_over_255_bytes_is_named_by_its_bytes_not_its_characters(tmp_path):
    """150 characters of two bytes each: a name the file system refuses, though shorter than 255 characters."""
    folder = "é" * 150
    with pytest.raises(AutomedsamError) as error:
        save_json(tmp_path / folder / "summary.json", {})
    assert f": the name {'é' * 40}... is 300 bytes, more than the 255 a file system takes" in str(error.value), \
        str(error.value)


@pytest.mark.parametrize("name_bytes", [200, 255])
def test_a_path_too_long_as_a_whole_is_called_so(tmp_path, name_bytes):
    """Names of up to 255 bytes each, none over the file system's limit, in a path longer than Linux's 4096 bytes."""
    target = tmp_path.joinpath(*["d" * name_bytes] * (4200 // name_bytes), "summary.json")
    with pytest.raises(AutomedsamError) as error:
        save_json(target, {})
    assert f": the path is too long for the file system ({len(os.fsencode(target))} bytes; Linux takes at most " \
           "4096). Choose a location with a shorter path" in str(error.value), str(error.value)


def test_a_copy_the_target_file_system_refuses_names_the_target(tmp_path, monkeypatch):
    def too_large(source, target, *args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    (tmp_path / "big.nii.gz").write_bytes(b"volume")
    monkeypatch.setattr(shutil, "copyfile", too_large)
    with pytest.raises(AutomedsamError, match=rf"Cannot write {tmp_path / 'usb' / 'big.nii.gz'}: File too large\. "):
        copy_file(tmp_path / "big.nii.gz", tmp_path / "usb" / "big.nii.gz")
    assert list((tmp_path / "usb").iterdir()) == []
