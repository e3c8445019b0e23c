"""Progress plots and overlays produce real PNGs that show what they claim to show."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automedsam.cli import plot_overlays as plot_overlays_cli
from automedsam.errors import AutomedsamError
from automedsam.evaluation import evaluate_folders
from automedsam.io import Geometry, write_image, write_segmentation
from automedsam.plotting import loss_curves, overlay, plot_overlays_folder, plot_progress


def training_log(epochs: int = 6) -> dict:
    entries = []
    for epoch in range(epochs):
        validation = None
        if epoch % 2 == 1:
            validation = {"box_dice": 0.5 + epoch / 20, "inside_box_fraction": 0.9, "dice": None if epoch < 3 else 0.7}
        entries.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "lr": 1e-3 * 0.9**epoch, "time_s": 2.5,
                        "loss_terms": {"empty_bce": 0.5 / (epoch + 1), "log_barrier": -0.1 * epoch}, "val": validation})
    return {"epochs": entries}


def png_pixels(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def count_near(pixels: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def disc(shape=(120, 160), centre=(60, 80), radius=30) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def test_progress_plot_has_three_panels_worth_of_content(tmp_path: Path):
    pixels = png_pixels(plot_progress(training_log(), tmp_path / "progress.png"))
    assert pixels.shape[0] > pixels.shape[1]  # three stacked panels
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines and text, not a blank canvas


def test_loss_curves_show_each_term_as_its_weighted_share_of_the_loss():
    log = {**training_log(3), "loss_weights": {"empty_bce": 0.1, "log_barrier": 1e-4}}
    curves = loss_curves(log)
    assert list(curves) == ["train loss", "empty_bce x 0.1", "log_barrier x 0.0001"]
    assert curves["empty_bce x 0.1"] == pytest.approx([0.05, 0.025, 0.05 / 3])
    assert curves["log_barrier x 0.0001"] == pytest.approx([0.0, -1e-5, -2e-5])
    assert list(loss_curves(training_log(3))) == ["train loss", "empty_bce", "log_barrier"]  # an older log


def test_progress_plot_of_an_empty_log(tmp_path: Path):
    png_pixels(plot_progress({"epochs": []}, tmp_path / "progress.png"))


def test_overlay_draws_prediction_and_reference_in_their_colours(tmp_path: Path):
    image = np.random.default_rng(0).normal(100, 5, (120, 160)).astype(np.float32)
    seg, ref = disc(radius=30), disc(centre=(55, 75), radius=35)
    pixels = png_pixels(overlay(image, seg, ref, tmp_path / "both.png", title="case"))
    assert count_near(pixels, "#ff3b30") > 50  # prediction label 1
    assert count_near(pixels, "#34ff5a") > 50  # reference
    alone = png_pixels(overlay(image, seg, None, tmp_path / "seg_only.png"))
    assert count_near(alone, "#34ff5a") == 0


def test_overlay_on_a_colour_image(tmp_path: Path):
    image = np.zeros((80, 100, 3), np.uint8)
    image[..., 2] = 120
    seg = disc(shape=(80, 100), centre=(40, 50), radius=20)
    assert count_near(png_pixels(overlay(image, seg, None, tmp_path / "rgb.png")), "#ff3b30") > 30


def test_volume_overlay_is_a_montage_of_the_busiest_slices(tmp_path: Path):
    volume = np.random.default_rng(1).random((10, 64, 64)).astype(np.float32)
    seg = np.zeros((10, 64, 64), np.uint8)
    for z, radius in {1: 4, 3: 20, 4: 12, 6: 16, 8: 8}.items():
        seg[z] = disc(shape=(64, 64), centre=(32, 32), radius=radius)
    montage = png_pixels(overlay(volume, seg, None, tmp_path / "volume.png"))
    single = png_pixels(overlay(volume[3], seg[3], None, tmp_path / "slice.png"))
    assert montage.shape[1] > 3 * single.shape[1]


def test_volume_overlay_titles_the_busiest_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from matplotlib.axes import Axes

    captions: list[str] = []
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: captions.append(text))
    seg = np.zeros((10, 32, 32), np.uint8)
    for z, size in {1: 2, 3: 10, 4: 6, 6: 8, 8: 4}.items():
        seg[z, :size, :size] = 1
    overlay(np.zeros((10, 32, 32)), seg, None, tmp_path / "volume.png")
    assert captions == ["slice 3", "slice 4", "slice 6", "slice 8"]


def test_overlay_refuses_a_mask_of_another_shape(tmp_path: Path):
    with pytest.raises(AutomedsamError, match="shape"):
        overlay(np.zeros((50, 60)), np.zeros((50, 61), np.uint8), None, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def make_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    images, segs, refs = tmp_path / "images", tmp_path / "segs", tmp_path / "refs"
    write_image(images / "001_HC_0000.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / "001_HC.png", disc(radius=28), Geometry.natural())
    write_segmentation(refs / "001_HC.png", disc(radius=30), Geometry.natural())
    geometry = Geometry(spacing=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    volume = np.zeros((5, 40, 40), np.float32)
    labels = np.zeros((5, 40, 40), np.uint8)
    labels[1:4, 10:30, 10:30] = 1
    labels[2, 15:25, 15:25] = 2
    write_image(images / "patient001_frame01.nii.gz", volume, geometry)
    write_segmentation(segs / "patient001_frame01.nii.gz", labels, geometry)
    write_image(images / "unpredicted_0000.png", np.zeros((10, 10), np.uint8), Geometry.natural())
    return images, segs, refs


def test_overlays_folder_matches_cases(tmp_path: Path):
    images, segs, refs = make_folders(tmp_path)
    written = plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert sorted(path.name for path in written) == ["001_HC.png", "patient001_frame01.png"]
    assert count_near(png_pixels(tmp_path / "out" / "001_HC.png"), "#34ff5a") > 50
    png_pixels(tmp_path / "out" / "patient001_frame01.png")


def test_a_case_named_in_bytes_that_are_not_utf8_is_drawn_under_its_own_name(tmp_path: Path):
    """A Latin-1 name from a Windows zip stopped the drawing (matplotlib's TypeError on its title), with a traceback,
    after only some overlays were written."""
    images, segs, refs = make_folders(tmp_path)
    name = os.fsdecode(b"patient\xe9 1")
    write_image(images / f"{name}.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / f"{name}.png", disc(radius=28), Geometry.natural())
    write_segmentation(refs / f"{name}.png", disc(radius=30), Geometry.natural())
    written = plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert sorted(path.name for path in written) == sorted(["001_HC.png", f"{name}.png", "patient001_frame01.png"])
    assert count_near(png_pixels(tmp_path / "out" / f"{name}.png"), "#34ff5a") > 50


def drawn_titles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """(text, font families) of every figure title, still drawn: matplotlib warns of missing glyphs as it draws."""
    from matplotlib.figure import Figure

    titles: list[tuple[str, list[str]]] = []
    suptitle = Figure.suptitle

    def recorded(self: Figure, text: str, **kw: object) -> object:
        titles.append((text, list(kw.get("fontfamily", []))))
        return suptitle(self, text, **kw)

    monkeypatch.setattr(Figure, "suptitle", recorded)
    return titles


def glyph_warnings(recorded: pytest.WarningsRecorder) -> list[str]:
    return [str(warning.message) for warning in recorded if "missing from font" in str(warning.message)]


def test_a_case_id_no_installed_font_holds_is_titled_in_escapes_without_a_warning_per_character(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder):
    """A Japanese case id on a machine without a Japanese font was titled in empty boxes, and each of its characters
    printed a matplotlib warning for every overlay drawn. With '$' in the id its escapes fell inside matplotlib's
    mathtext ($...$), and drawing the overlays stopped at that case ('Unknown symbol: \\u')."""
    from automedsam import plotting

    monkeypatch.setattr(plotting, "_fallback_fonts", lambda: [])  # as if DejaVu were all there is
    titles = drawn_titles(monkeypatch)
    images, segs, refs = tmp_path / "images", tmp_path / "segs", tmp_path / "refs"
    write_image(images / "患$者$_01.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / "患$者$_01.png", disc(radius=28), Geometry.natural())
    write_segmentation(refs / "患$者$_01.png", disc(radius=30), Geometry.natural())
    written = plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert [path.name for path in written] == ["患$者$_01.png"]
    assert glyph_warnings(recwarn) == []
    assert len(titles) == 1 and re.fullmatch(r"\\u60a3\$\\u8005\$_01  \(Dice 0\.\d{3}\)", titles[0][0])


def test_a_title_character_the_default_font_lacks_is_drawn_in_an_installed_font_that_holds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder):
    """matplotlib's own STIX fonts hold the palatal-hook d that DejaVu Sans lacks: the title keeps the letter."""
    titles = drawn_titles(monkeypatch)
    overlay((disc() * 150 + 50).astype(np.uint8), disc(radius=28), None, tmp_path / "case.png", title="patient \u1d81")
    [(text, families)] = titles
    assert glyph_warnings(recwarn) == []
    assert text == "patient \u1d81" and len(families) > 1


def test_a_title_character_only_a_bold_face_holds_is_not_taken_as_drawn(
        tmp_path: Path, recwarn: pytest.WarningsRecorder):
    """DejaVu Sans Bold holds the Greek yot its regular face lacks: the bold file was asked, the title drawn in the
    regular face, and the letter came out as a box with matplotlib's warning."""
    from matplotlib import font_manager

    from automedsam import plotting

    regular = font_manager.findfont(font_manager.FontProperties(family=["DejaVu Sans"]))
    assert not plotting._holds(regular, "\u037f")
    overlay((disc() * 150 + 50).astype(np.uint8), disc(radius=28), None, tmp_path / "case.png", title="patient \u037f")
    assert glyph_warnings(recwarn) == []


def test_looking_for_a_font_that_holds_a_title_prints_no_font_manager_notes(tmp_path: Path):
    """Asked for its regular face, every installed family without one (DejaVu Sans Light) printed a 'findfont:
    Failed to find font weight' line on a plot run."""
    script = "from automedsam import plotting; print(plotting._drawable_title('patient \u037f'))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "Failed to find font weight" not in done.stderr, done.stderr


def test_images_and_references_named_in_another_unicode_normalisation_pair_with_their_segmentation(tmp_path: Path):
    """Images and references written on macOS (decomposed é) and predictions named elsewhere (composed é): the
    segmentation had 'no image of the same case id', as evaluate once said 'no prediction'."""
    images, segs, refs = make_folders(tmp_path)
    decomposed, composed = unicodedata.normalize("NFD", "patient é 1"), unicodedata.normalize("NFC", "patient é 1")
    write_image(images / f"{decomposed}.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / f"{composed}.png", disc(radius=28), Geometry.natural())
    write_segmentation(refs / f"{decomposed}.png", disc(radius=30), Geometry.natural())
    written = plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert f"{composed}.png" in [path.name for path in written]
    assert count_near(png_pixels(tmp_path / "out" / f"{composed}.png"), "#34ff5a") > 50  # the reference is drawn
    write_segmentation(segs / f"{decomposed}.png", disc(radius=28), Geometry.natural())
    with pytest.raises(AutomedsamError, match="differ only in how their accented letters are encoded"):
        plot_overlays_folder(images, segs, tmp_path / "out2", refs_dir=refs)


def test_a_log_shows_which_overlays_are_drawn_while_they_are_drawn(tmp_path, monkeypatch, capsys):
    """rich's bar wrote nothing into a log file until every overlay was drawn: a long run looked hung."""
    import automedsam.plotting as plotting

    images, segs, refs = make_folders(tmp_path)
    seen_while_drawing: list[str] = []
    draw = plotting.overlay

    def watched_overlay(*args, **kwargs):
        seen_while_drawing.append(capsys.readouterr().err)
        return draw(*args, **kwargs)

    monkeypatch.setattr(plotting, "overlay", watched_overlay)
    plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert re.search(r"^\[\d\d:\d\d:\d\d\] Drawing overlays: 0/2 \(0%\)$", seen_while_drawing[0], re.MULTILINE)
    assert "] Reading labels: 1/1 (100%), done in" in seen_while_drawing[0]
    assert "Drawing overlays: 2/2 (100%), done in" in capsys.readouterr().err


def test_overlay_titles_score_a_0_255_reference_as_the_predicted_label(tmp_path: Path, monkeypatch):
    from matplotlib.figure import Figure

    titles: list[str] = []
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, *a, **k: titles.append(text))
    images, segs, refs = tmp_path / "images", tmp_path / "segs", tmp_path / "refs"
    write_image(images / "nodule.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / "nodule.png", disc(radius=28), Geometry.natural())
    refs.mkdir()
    Image.fromarray((disc(radius=30) * 255).astype(np.uint8)).save(refs / "nodule.png")
    write_image(images / "missed.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(segs / "missed.png", np.zeros_like(disc()), Geometry.natural())
    Image.fromarray(np.stack([disc() * 255] * 3, axis=-1).astype(np.uint8)).save(refs / "missed.png")
    plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    expected = 2 * 28**2 / (28**2 + 30**2)  # the discs are concentric: areas about pi r^2
    assert len(titles) == 2 and titles[0] == "missed  (Dice 0.000)" and titles[1].startswith("nodule  (Dice 0.")
    assert float(titles[1].split("Dice ")[1].rstrip(")")) == pytest.approx(expected, abs=0.01)
    write_segmentation(refs / "nodule.png", disc(radius=28) * 2, Geometry.natural())  # another structure's map
    for folder in (segs, refs):  # a colour mask beside labels 1 and 2 is refused, as evaluate refuses it
        (folder / "missed.png").unlink()
    plot_overlays_folder(images, segs, tmp_path / "again", refs_dir=refs)
    assert titles[-1] == "nodule  (Dice 0.000)"  # was 1.000: the reference relabelled to the predicted label


def record_titles_and_legends(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[list[str]]]:
    """What each overlay's title says and which entries its legend names."""
    from matplotlib.figure import Figure

    titles: list[str] = []
    legends: list[list[str]] = []
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, *a, **k: titles.append(text))
    monkeypatch.setattr(Figure, "legend", lambda self, *a, handles=(), **k: legends.append(
        [handle.get_label() for handle in handles]))
    return titles, legends


def one_case_folders(tmp_path: Path, prediction: np.ndarray, *, ending: str = ".png", **save) -> tuple[Path, ...]:
    """An image, a prediction saved as given (Pillow, so 0/255 and JPEG stay as they are) and a 0/1 reference disc."""
    images, segs, refs = tmp_path / "images", tmp_path / "segs", tmp_path / "refs"
    write_image(images / "x.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    write_segmentation(refs / "x.png", disc(radius=30), Geometry.natural())
    segs.mkdir()
    Image.fromarray(prediction).save(segs / f"x{ending}", **save)
    return images, segs, refs


def test_a_0_255_prediction_of_a_0_1_reference_is_drawn_and_scored_as_evaluate_scores_it(tmp_path, monkeypatch):
    """The prediction was read as a plain label map: 'prediction 255' drawn and titled Dice 0.000 where evaluate
    gives 1.0 for the same files."""
    titles, legends = record_titles_and_legends(monkeypatch)
    images, segs, refs = one_case_folders(tmp_path, (disc(radius=30) * 255).astype(np.uint8))
    plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    assert evaluate_folders(refs, segs)["per_case"]["x"][1]["dice"] == 1.0
    assert titles == ["x  (Dice 1.000)"] and legends == [["prediction 1", "reference"]]


def test_a_jpeg_prediction_is_scored_in_the_title_as_evaluate_scores_it(tmp_path, monkeypatch):
    """A JPEG prediction's compression noise was drawn as ~20 labels and titled Dice 0.002 (evaluate: 0.9)."""
    titles, legends = record_titles_and_legends(monkeypatch)
    shifted = (disc(centre=(60, 88), radius=30) * 255).astype(np.uint8)
    images, segs, refs = one_case_folders(tmp_path, shifted, ending=".jpg", quality=85)
    assert len(np.unique(np.asarray(Image.open(segs / "x.jpg")))) > 10
    plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)
    scored = evaluate_folders(refs, segs)["per_case"]["x"]
    assert list(scored) == [1] and 0.5 < scored[1]["dice"] < 0.95
    assert titles == [f"x  (Dice {scored[1]['dice']:.3f})"] and legends == [["prediction 1", "reference"]]


def contour_extent(pixels: np.ndarray, hex_colour: str) -> tuple[int, int]:
    """Height and width of the largest closed run of the colour (the contour, not the legend's sample line)."""
    from scipy import ndimage

    near = np.abs(pixels - np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])).max(-1) <= 40
    components, count = ndimage.label(near, structure=np.ones((3, 3)))
    largest = 1 + int(np.argmax(ndimage.sum(near, components, range(1, count + 1))))
    rows, cols = np.nonzero(components == largest)
    return int(rows.max() - rows.min()), int(cols.max() - cols.min())


def test_overlays_draw_pixels_at_their_spacing(tmp_path: Path):
    """A square of 20 rows x 40 columns at 1.0 x 0.5 mm is square on the patient and in the overlay."""
    seg = np.zeros((40, 80), np.uint8)
    seg[10:30, 20:60] = 1
    image = np.zeros((40, 80), np.float32)
    height, width = contour_extent(png_pixels(overlay(image, seg, None, tmp_path / "a.png", spacing=(0.5, 1.0))),
                                   "#ff3b30")
    assert height == pytest.approx(width, rel=0.15)
    height, width = contour_extent(png_pixels(overlay(image, seg, None, tmp_path / "b.png")), "#ff3b30")
    assert width == pytest.approx(2 * height, rel=0.15)  # without spacing: pixels square


def test_volume_overlays_are_cut_along_the_coarsest_axis(tmp_path: Path, monkeypatch):
    from automedsam import plotting

    drawn: list[tuple[int, ...]] = []
    draw = plotting._draw_panel
    monkeypatch.setattr(plotting, "_draw_panel", lambda axes, pixels, *rest, **kw: (drawn.append(pixels.shape),
                                                                                      draw(axes, pixels, *rest, **kw)))
    seg = np.zeros((40, 30, 8), np.uint8)  # (Z, Y, X), x the 5 mm axis
    seg[10:30, 5:25, 2:6] = 1
    overlay(np.zeros(seg.shape, np.float32), seg, None, tmp_path / "v.png", spacing=(5.0, 0.7, 0.7))
    assert drawn == [(40, 30)] * 4  # slices along x, as the planner slices such a volume


def test_an_object_touching_the_border_is_outlined_along_it(tmp_path: Path, monkeypatch):
    """The contour at 0.5 needs background beyond an object: one filling the image's corner was left open along the
    image's edges."""
    from automedsam import plotting

    panels = []
    draw = plotting._draw_panel
    monkeypatch.setattr(plotting, "_draw_panel", lambda axes, *rest, **kw: (panels.append(axes),
                                                                             draw(axes, *rest, **kw)))
    seg = np.zeros((40, 80), np.uint8)
    seg[:10, :20] = 1
    overlay(np.zeros((40, 80)), seg, None, tmp_path / "corner.png")
    (contour,) = panels[0].collections
    (path,) = contour.get_paths()
    assert np.allclose(path.vertices[0], path.vertices[-1])  # closed
    assert path.vertices.min(axis=0).tolist() == [-0.5, -0.5]  # along the top and left edges of the image
    assert panels[0].get_xlim() == (-0.5, 79.5) and panels[0].get_ylim() == (39.5, -0.5)  # the image frames it


def test_a_label_keeps_its_colour_whatever_else_a_case_holds(tmp_path: Path):
    only_two = png_pixels(overlay(np.zeros((120, 160)), disc() * 2, None, tmp_path / "two.png"))
    assert count_near(only_two, "#ffcc00") > 30 and count_near(only_two, "#ff3b30") == 0
    many = disc().astype(np.uint8) * 10  # the tenth label has a colour of its own, not label 2's
    assert count_near(png_pixels(overlay(np.zeros((120, 160)), many, None, tmp_path / "ten.png")), "#ffcc00") == 0


def test_overlays_warn_of_a_segmentation_placed_elsewhere_than_its_image(tmp_path: Path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    titles: list[str] = []
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, *a, **k: titles.append(text))
    images, segs = tmp_path / "images", tmp_path / "segs"
    volume = np.zeros((4, 40, 40), np.float32)
    volume[:, 10:20, 5:15] = 1
    image_geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                              kind="sitk")
    flipped = Geometry(spacing=(1.0, 1.0, 1.0), origin=(39.0, 0.0, 0.0),
                       direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), kind="sitk")
    write_image(images / "c_0000.nii.gz", volume, image_geometry)
    write_segmentation(segs / "c.nii.gz", volume[:, :, ::-1].astype(np.uint8), flipped)
    plot_overlays_folder(images, segs, tmp_path / "out")
    assert "header differs" in titles[0] and "origin" in titles[0]
    assert "c: the segmentation's header differs" in capsys.readouterr().err.replace("\n", "")
    write_segmentation(segs / "c.nii.gz", volume.astype(np.uint8), image_geometry)
    plot_overlays_folder(images, segs, tmp_path / "again")
    assert titles[-1] == "c"


def test_a_one_epoch_progress_plot_shows_its_points(tmp_path: Path, monkeypatch):
    from automedsam import plotting

    figures = []
    monkeypatch.setattr(plotting, "_save", lambda figure, out_png, dpi=100: figures.append(figure))
    plot_progress(training_log(1), tmp_path / "progress.png")
    loss_axes, _, lr_axes = figures[0].axes[:3]
    for line in [*loss_axes.get_lines(), *lr_axes.get_lines()]:
        assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")


def test_images_given_as_segmentations_are_refused(tmp_path: Path):
    """-s pointed at the images drew a contour for each of 255 grey levels, exit 0; evaluate refuses the same."""
    images, _, _ = make_folders(tmp_path)
    grey = tmp_path / "grey"
    write_image(grey / "001_HC.png", (np.arange(120 * 160).reshape(120, 160) % 250).astype(np.uint8),
                Geometry.natural())
    with pytest.raises(AutomedsamError, match="looks like an image.*Point -s at label maps"):
        plot_overlays_folder(images, grey, tmp_path / "out")


def test_a_photo_given_as_the_reference_is_refused(tmp_path: Path):
    """A colour reference of a one-label segmentation was read as a one-object mask whatever it held: -r pointed at
    colour images drew each one's brighter half as the reference."""
    images, segs, _ = make_folders(tmp_path)
    rows, cols = np.mgrid[:120, :160]
    photo = np.stack([rows * 2, cols * 1.5, np.full((120, 160), 60)], axis=-1).astype(np.uint8)
    write_image(tmp_path / "photos" / "001_HC.png", photo, Geometry.natural())
    with pytest.raises(AutomedsamError, match="001_HC.png looks like an image"):
        plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=tmp_path / "photos")


def test_overlays_folder_reports_segmentations_without_image(tmp_path: Path):
    images, segs, _ = make_folders(tmp_path)
    write_segmentation(segs / "stray.png", disc(), Geometry.natural())
    with pytest.raises(AutomedsamError, match="stray"):
        plot_overlays_folder(images, segs, tmp_path / "out")


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["automedsam_plot_overlays", *args])
    try:
        plot_overlays_cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_writes_overlays_and_reports_errors(tmp_path, monkeypatch, capsys):
    images, segs, refs = make_folders(tmp_path)
    out = tmp_path / "overlays"
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out)) == 0
    assert "Wrote 2 overlay images" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 2
    assert run_main(monkeypatch, "-i", str(tmp_path / "missing"), "-s", str(segs), "-o", str(out)) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_colour_reference_of_several_predicted_labels_is_refused_with_advice_plot_overlays_can_follow(
        tmp_path, monkeypatch, capsys):
    """The error said to pass automedsam_evaluate --labels N, an option automedsam_plot_overlays lacked."""
    images, segs, refs = tmp_path / "images", tmp_path / "segs", tmp_path / "refs"
    write_image(images / "x.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
    two_labels = disc(radius=30)
    two_labels[:20, :20] = 2
    write_segmentation(segs / "x.png", two_labels, Geometry.natural())
    refs.mkdir()
    Image.fromarray(np.stack([disc(radius=30) * 255, disc() * 0, disc() * 0], axis=-1).astype(np.uint8)).save(
        refs / "x.png")
    out = tmp_path / "out"
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out)) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "colour" in error and "--labels 1" in error and "Traceback" not in error
    assert "automedsam_evaluate" not in error and "or -d for" not in error
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out),
                    "--labels", "1") == 0
    assert count_near(png_pixels(out / "x.png"), "#34ff5a") > 50  # the colour reference drawn as label 1


def test_overlays_left_from_an_earlier_run_are_named_not_deleted(tmp_path, monkeypatch, capsys):
    """A case gone from -s kept its old overlay in OUT, and the final line said nothing of it."""
    images, segs, refs = make_folders(tmp_path)
    out = tmp_path / "overlays"
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out)) == 0
    assert "Warning" not in capsys.readouterr().out
    (segs / "001_HC.png").unlink()  # the one case with a reference: -r would now be refused
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-o", str(out)) == 0
    output = " ".join(capsys.readouterr().out.split())
    assert "Wrote 1 overlay images" in output
    assert "Warning: 1 other PNG(s)" in output and "not drawn by this run (001_HC.png)" in output
    assert (out / "001_HC.png").is_file()


def test_two_images_of_one_case_are_refused_without_naming_an_option_it_lacks(tmp_path, monkeypatch, capsys):
    """The error said to pass --file-ending, which automedsam_plot_overlays does not have."""
    images, segs, _ = make_folders(tmp_path)
    write_image(images / "001_HC.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())  # beside _0000
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-o", str(tmp_path / "out")) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "Case '001_HC' has two image files" in error and "Keep one" in error
    assert "--file-ending" not in error and "Traceback" not in error


def drawn_progress(log: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The progress figure as written to the PNG, with a renderer to measure its text."""
    from automedsam import plotting

    figures = []
    save = plotting._save
    monkeypatch.setattr(plotting, "_save", lambda figure, out_png, dpi=100: (figures.append(figure),
                                                                              save(figure, out_png, dpi=dpi))[1])
    plot_progress(log, tmp_path / "progress.png")
    figures[0].canvas.draw()
    return figures[0], figures[0].canvas.get_renderer()


def barrier_log(tightness: list[float]) -> dict:
    """Dataset011's 4-epoch log (the tightness log-barrier goes negative) with the given tightness values."""
    terms = [{"box_size": 0.79, "empty_bce": 0.011, "pseudo_label": 0.60},
             {"box_size": 0.50, "empty_bce": 0.0014, "pseudo_label": 0.71},
             {"box_size": 1.39, "empty_bce": 0.042, "pseudo_label": 0.80},
             {"box_size": 0.79, "empty_bce": 0.042, "pseudo_label": 0.69}]
    epochs = [{"epoch": epoch + 1, "train_loss": [0.63, 0.73, 0.82, 0.70][epoch], "lr": 1e-3, "time_s": 2.0,
               "loss_terms": {**terms[epoch], "tightness": tightness[epoch]},
               "val": {"box_dice": 0.52, "inside_box_fraction": 0.52, "dice": None} if epoch == 3 else None}
              for epoch in range(4)]
    return {"epochs": epochs, "loss_weights": {"empty_bce": 0.1, "tightness": 1e-4, "box_size": 0.01,
                                               "pseudo_label": 1.0}}


@pytest.mark.parametrize("tightness", [[168.7, 141.2, 9.16, -21.6], [168.7, -0.001, -1e4, -5e3], [-3.0] * 4,
                                       [1e-9, -1e-9, 0.0, 0.0]])
def test_loss_axis_tick_labels_do_not_overlap(tmp_path, monkeypatch, tightness):
    """A negative log-barrier term put 1e-4, 0 and -1e-4 on top of each other (symlog, linear band one decade)."""
    figure, renderer = drawn_progress(barrier_log(tightness), tmp_path, monkeypatch)
    for axes in figure.axes[:3]:
        low, high = sorted(axes.get_ylim())
        labels = [tick.label1 for tick in axes.yaxis.get_major_ticks()
                  if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()]
        assert len(labels) >= 2
        extents = [label.get_window_extent(renderer) for label in labels]
        for index, extent in enumerate(extents):
            for other, text in zip(extents[index + 1:], labels[index + 1:]):
                assert not extent.overlaps(other), (labels[index].get_text(), text.get_text())


def test_progress_legends_sit_beside_the_panels_not_on_the_curves(tmp_path, monkeypatch):
    """loc='best' put the legend over the train loss of fold_all/progress.png."""
    figure, renderer = drawn_progress(barrier_log([168.7, 141.2, 9.16, -21.6]), tmp_path, monkeypatch)
    legends = [axes.get_legend() for axes in figure.axes[:3] if axes.get_legend() is not None]
    assert len(legends) == 2  # losses and validation metrics
    page = figure.bbox
    for legend in legends:
        extent = legend.get_window_extent(renderer)
        assert not any(extent.overlaps(axes.get_window_extent(renderer)) for axes in figure.axes[:3])
        assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and page.y0 <= extent.y0 and extent.y1 <= page.y1


def test_a_reference_folder_holding_no_drawn_case_is_refused_as_evaluate_refuses_it(tmp_path, monkeypatch, capsys):
    """-r labelsTr for predictions of imagesTs wrote overlays without a reference contour or Dice, exit 0."""
    images, segs, refs = make_folders(tmp_path)
    (refs / "001_HC.png").rename(refs / "training_case.png")
    out = tmp_path / "out"
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out)) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"None of the 2 segmentations in {segs} has a reference of the same case id in {refs}" in error
    assert "001_HC, patient001_frame01" in error and "training_case" in error and "Traceback" not in error
    assert not list(out.glob("*.png"))
    (refs / "training_case.png").unlink()
    with pytest.raises(AutomedsamError, match=r"\(0 matched\).*references: none"):
        plot_overlays_folder(images, segs, out, refs_dir=refs)


def test_cases_drawn_without_a_reference_are_named_in_one_warning(tmp_path, monkeypatch, capsys):
    """With -r holding 1 of 13 drawn cases' references, the other 12 were drawn without one, silently."""
    images, segs, refs = make_folders(tmp_path)
    for index in range(11):
        write_image(images / f"extra{index:02d}.png", (disc() * 150 + 50).astype(np.uint8), Geometry.natural())
        write_segmentation(segs / f"extra{index:02d}.png", disc(radius=28), Geometry.natural())
    assert len(plot_overlays_folder(images, segs, tmp_path / "out", refs_dir=refs)) == 13
    warning = [line for line in capsys.readouterr().err.splitlines() if "no reference" in line]
    assert warning == [f"Warning: 12 of 13 segmentations in {segs} have no reference in {refs} and are drawn without "
                       "one, nor a Dice: extra00, extra01, extra02, extra03, extra04, extra05, extra06, extra07, "
                       "extra08, extra09 and 2 more."]
    plot_overlays_folder(images, segs, tmp_path / "again")  # no -r: nothing to warn of
    assert "no reference" not in capsys.readouterr().err


def test_overlay_labels_that_no_reference_or_segmentation_holds_are_refused(tmp_path, monkeypatch, capsys):
    """--labels 3 (a typo) titled every overlay 'Dice n/a', exit 0, where automedsam_evaluate now refuses it."""
    images, segs, refs = make_folders(tmp_path)
    out = tmp_path / "out"
    assert run_main(monkeypatch, "-i", str(images), "-s", str(segs), "-r", str(refs), "-o", str(out),
                    "--labels", "3") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "None of the labels asked for ([3])" in error and "they hold the label values [1]" in error
    assert "-d" not in error and "Traceback" not in error and not list(out.glob("*.png"))
    titles, _ = record_titles_and_legends(monkeypatch)
    plot_overlays_folder(images, segs, out, refs_dir=refs, labels=[1, 3])
    assert "Warning: label(s) [3] of --labels occur in no reference or segmentation" in " ".join(
        capsys.readouterr().err.split())
    assert titles[0].startswith("001_HC  (Dice 0.")
