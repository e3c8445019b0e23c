"""No file automedsam reads can make it run code: no pickle in the package, and every checkpoint loader refuses a
malicious pickle (one whose payload would create a marker file) with a clear message, the payload never run."""
from __future__ import annotations

import ast
import contextlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import automedsam
from automedsam.checkpoint import TRAINING_STATE, load_checkpoint, load_training_state
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.cache import EmbeddingCache
from automedsam.foundation.checkpoints import read_state_dict
from automedsam.foundation.registry import build_foundation_model
from automedsam.inference import open_model_folder
from bad_input_world import Payload, write_malicious_checkpoint
from toy_model import toy_plans

PACKAGE = Path(automedsam.__file__).parent
PICKLE_ATTRIBUTES_ALLOWED = {"UnpicklingError", "PROTO"}  # catching torch's refusal, recognising a legacy file


def package_sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((item.value for item in call.keywords if item.arg == name), None)


def dotted(node: ast.expr) -> str:
    """`torch.load` for the expression torch.load, '' for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def unsafe_uses(path: Path, tree: ast.Module) -> list[str]:
    """Every construct of `tree` that could run code from a file's content."""
    where = f"{path.relative_to(PACKAGE.parent)}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in filter(None, names):
                if name.split(".")[0] in {"dill", "cloudpickle", "joblib", "shelve", "marshal", "yaml"}:
                    found.append(f"{where}:{node.lineno} imports {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                found.append(f"{where}:{node.lineno} imports names from pickle")
        elif isinstance(node, ast.Attribute) and dotted(node.value) == "pickle":
            if node.attr not in PICKLE_ATTRIBUTES_ALLOWED:
                found.append(f"{where}:{node.lineno} uses pickle.{node.attr}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in {"eval", "exec", "compile", "__import__"}:
                found.append(f"{where}:{node.lineno} calls {name}()")
            elif name in {"torch.load", "torch.jit.load"}:
                flag = keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{where}:{node.lineno} calls torch.load without weights_only=True")
            elif name in {"np.load", "numpy.load"}:
                flag = keyword(node, "allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{where}:{node.lineno} calls {name} with allow_pickle={ast.unparse(flag)}")
    return found


def test_package_never_unpickles_or_evaluates_file_content():
    sources = package_sources()
    assert len(sources) > 30  # the whole package was scanned
    problems = [problem for path, tree in sources for problem in unsafe_uses(path, tree)]
    assert problems == []
    text = "\n".join(path.read_text() for path, _ in sources)
    assert "allow_pickle=True" not in text and "weights_only=False" not in text


def test_the_scanner_catches_each_unsafe_construct():
    snippet = ("import pickle\nimport numpy as np\nimport torch\nimport dill\npickle.loads(b'')\n"
               "torch.load('a.pt')\ntorch.load('a.pt', weights_only=False)\nnp.load('a.npy', allow_pickle=True)\n"
               "eval(open('f').read())\nexec('1')\n")
    found = unsafe_uses(PACKAGE / "snippet.py", ast.parse(snippet))
    assert len(found) == 7, found


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    """The payload as a torch.save zip file and as a legacy plain pickle, proven live by an unsafe load."""
    zipped = write_malicious_checkpoint(tmp_path / "zipped.pt", marker)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"weight": Payload(marker)}, protocol=2))
    for path in (zipped, legacy):
        with contextlib.suppress(RuntimeError):  # the legacy file is no real checkpoint, but the payload runs first
            torch.load(path, weights_only=False)  # the control: loading unsafely does run the payload
        assert marker.exists()
        marker.unlink()
    return [zipped, legacy]


REFUSAL = r"Python objects or code|cannot be read"


def test_foundation_checkpoints_are_refused(evil_files, marker):
    for path in evil_files:
        with pytest.raises(AutomedsamError, match="Python objects or code") as refused:
            read_state_dict(path, "medsam_vit_b")
        assert str(path) in str(refused.value)
        for model in ("litemedsam", "medsam_vit_b"):
            with pytest.raises(AutomedsamError, match=REFUSAL):
                build_foundation_model(model, checkpoint=path, device="cpu")
    assert not marker.exists()


def test_trainer_checkpoints_and_resume_state_are_refused(evil_files, marker, tmp_path):
    for path in evil_files:
        fold = tmp_path / path.stem / "fold_0"
        fold.mkdir(parents=True)
        for name in ("checkpoint_best.pt", "checkpoint_final.pt", TRAINING_STATE):
            (fold / name).write_bytes(path.read_bytes())
        for which in ("best", "final"):
            with pytest.raises(AutomedsamError, match=REFUSAL) as refused:
                load_checkpoint(fold, which)
            assert f"checkpoint_{which}.pt" in str(refused.value) and "weights_only" not in str(refused.value)
        with pytest.raises(AutomedsamError, match=REFUSAL):
            load_training_state(fold)
    assert not marker.exists()


def test_predictor_refuses_a_poisoned_fold(evil_files, marker, tmp_path):
    model_dir = tmp_path / "results" / "Dataset001_Toy" / "default__toyPlans"
    save_json(model_dir / "plans.json", toy_plans())
    (model_dir / "fold_0").mkdir(parents=True)
    (model_dir / "fold_0" / "checkpoint_final.pt").write_bytes(evil_files[0].read_bytes())
    folder = open_model_folder(model_dir)
    with pytest.raises(AutomedsamError, match="Python objects or code"):
        folder.load_state(0)
    assert not marker.exists()


def test_pickled_embeddings_are_never_loaded(tmp_path, marker):
    cache = EmbeddingCache(tmp_path, "litemedsam")
    cache.directory.mkdir(parents=True)
    poisoned = np.empty(1, dtype=object)
    poisoned[0] = Payload(marker)
    np.save(cache.path("a"), poisoned, allow_pickle=True)
    assert cache.get("a") is None  # treated as missing: recomputed and overwritten, never unpickled
    assert not marker.exists()
