"""The speed benchmark's scale run: more inputs than held-out cases, each a link to a real image."""
from pathlib import Path

from automedsam.benchmarks.speed_workspace import repeated_input_folder
from automedsam.dataset import Case


def test_repeated_input_folder_cycles_through_the_cases_under_new_names(tmp_path: Path):
    cases = []
    for index in range(3):
        image = tmp_path / f"case{index}_0000.nii.gz"
        image.write_bytes(bytes([index]))
        cases.append(Case(f"case{index}", image, None, None, f"case{index}"))
    folder = repeated_input_folder(cases, 7, tmp_path / "scale")
    links = sorted(folder.iterdir())
    assert [link.name for link in links] == [f"img{index:04d}_0000.nii.gz" for index in range(7)]
    assert [link.read_bytes()[0] for link in links] == [0, 1, 2, 0, 1, 2, 0]
    assert repeated_input_folder(cases, 7, tmp_path / "scale") == folder and len(list(folder.iterdir())) == 7
