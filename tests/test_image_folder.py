"""`--dataset=image_folder` and CelebA from its own files (issue 41, items 4 and 5): a folder of generated JPEG and
PNG images with a labels file trains, evaluates, exports and serves; bad input and missing data are one sentence,
fail fast and write nothing."""

import base64
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
import train
from evaluate.stage_base import Common
from export import encoder
from tests.conftest import REPO
from tests.test_evaluate_pipeline import _tiny_stages
from tests.test_serving import Server, post, reference
from tests.test_train_cli import _command
from zoo import data, pretrained

IMAGES = 40
SIDE, BAND = 40, 16  # each picture: a SIDE x SIDE square of its colour between two green bands, which cropping drops
CELEBA_COLUMNS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male "
    "Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
TINY = dict(arch="mlp", latent_dim=8, batch_size=8, eval_examples=8, checkpoint_every=2, verbose=0)


def _picture(red, wide, rng):
    """A red or blue square between two green bands, side by side (`wide`) or one above the other."""
    square = np.zeros((SIDE, SIDE, 3), np.uint8)
    square[..., 0 if red else 2] = 220
    band = np.zeros((SIDE, BAND, 3) if wide else (BAND, SIDE, 3), np.uint8)
    band[..., 1] = 220
    picture = np.concatenate([band, square, band], axis=1 if wide else 0)
    return np.clip(picture.astype(int) + rng.integers(0, 25, picture.shape), 0, 255).astype(np.uint8)


def write_folder(root, images=IMAGES, labels=True):
    """`images` JPEG and PNG pictures (a few in a subfolder); `labels.csv` labels each `red` and `wide`, its
    filename column in the middle, naming an image by its path or, for most, by its file name alone."""
    os.makedirs(os.path.join(root, "more"), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["red,filename,wide"]
    for i in range(images):
        red, wide = i % 2, i % 4 < 2
        name = f"{'more/' if i >= 30 else ''}img_{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(_picture(red, wide, rng)).save(os.path.join(root, name))
        rows.append(f"{red},{name if i % 5 == 0 else os.path.basename(name)},{int(wide)}")
    if labels:
        with open(os.path.join(root, "labels.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return str(root)


def write_celeba(root, images=24):
    """CelebA's own layout: img_align_celeba/ with 218x178 JPEGs, list_attr_celeba.txt (its 40 columns, -1/1,
    double spaces) and list_eval_partition.txt."""
    os.makedirs(os.path.join(root, "img_align_celeba"))
    rng = np.random.default_rng(1)
    attributes = rng.choice([-1, 1], size=(images, len(CELEBA_COLUMNS)))
    names = [f"{i + 1:06d}.jpg" for i in range(images)]
    for i, name in enumerate(names):
        face = rng.integers(0, 255, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(face).save(os.path.join(root, "img_align_celeba", name))
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{images}\n{' '.join(CELEBA_COLUMNS)} \n")
        f.writelines(f"{name} {' '.join(f'{v:2d}' for v in row)}\n" for name, row in zip(names, attributes))
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.writelines(f"{name} {0 if i < 16 else 1 if i < 20 else 2}\n" for i, name in enumerate(names))
    return str(root), dict(zip(names, attributes))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_celeba(tmp_path_factory.mktemp("celeba"))


def _examples(dataset, split, data_dir):
    images, labels = [], {}
    for x, y in data.load(dataset, split, 64, data_dir=data_dir):
        images.append(x.numpy())
        for task, values in y.items():
            labels.setdefault(task, []).extend(values.numpy().tolist())
    return np.concatenate(images), labels


def test_a_folder_is_centre_cropped_64x64_images_with_its_labels_as_tasks_and_a_fixed_split(folder, tmp_path):
    spec = data.get_spec("image_folder", folder)
    assert spec.tasks == {"red": 2, "wide": 2} and spec.image_shape == (64, 64, 3)
    images, labels = _examples("image_folder", "train", folder)
    test_images, test_labels = _examples("image_folder", "test", folder)
    assert len(images) + len(test_images) == IMAGES and len(test_images) >= 1
    for x, y in ((images, labels), (test_images, test_labels)):
        assert x.shape[1:] == (64, 64, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        assert x[..., 1].mean() < 0.15  # the green bands are cropped away, whichever side they were on
        red = x[..., 0].mean(axis=(1, 2)) > x[..., 2].mean(axis=(1, 2))
        np.testing.assert_array_equal(red, np.array(y["red"]) == 1)
    # An image keeps its split when images are added: the split is a hash of each image's path.
    grown = shutil.copytree(folder, tmp_path / "grown")
    Image.fromarray(_picture(1, True, np.random.default_rng(5))).save(grown / "img_new.png")
    with open(grown / "labels.csv", "a") as f:
        f.write("1,img_new.png,1\n")

    def held_out(root):
        read = data.image_folder(root)
        return {name for name, split in zip(read.names, read.splits) if split == "test"}

    assert held_out(folder) <= held_out(str(grown))
    with pytest.raises(ValueError, match="has splits 'train', 'test', not 'validation'"):
        data.load("image_folder", "validation", 8, data_dir=folder)


def test_a_folder_without_labels_trains_but_has_no_tasks(tmp_path):
    root = write_folder(tmp_path / "unlabelled", labels=False)
    assert data.get_spec("image_folder", root).tasks == {}
    (x, y), *_ = data.load("image_folder", "train", 4, data_dir=root)
    assert x.shape == (4, 64, 64, 3) and y == {}
    result = train.run(
        "vae", str(tmp_path / "model"), dataset="image_folder", data_dir=root, train_steps=2, summary=True, **TINY
    )
    assert result.step == 2 and result.summary["robustness"] is None and result.summary["elbo"]


def test_celeba_from_its_own_files_has_the_17_tasks_and_its_partition(celeba):
    root, attributes = celeba
    spec = data.check_available("celeb_a", root, download=False)  # its own files: no tfds, no download
    assert list(spec.tasks) == list(data.CELEBA_ATTRIBUTES) and spec.image_shape == (64, 64, 3)
    images, labels = _examples("celeb_a", "test", root)  # partition 2: the last four
    assert images.shape == (4, 64, 64, 3) and list(labels) == list(data.CELEBA_ATTRIBUTES)
    for task in data.CELEBA_ATTRIBUTES:
        expected = [(attributes[f"{i:06d}.jpg"][CELEBA_COLUMNS.index(task)] + 1) // 2 for i in range(21, 25)]
        assert labels[task] == expected, task
    assert len(_examples("celeb_a", "validation", root)[0]) == 4 and len(_examples("celeb_a", "train", root)[0]) == 16
    # Cropped as tfds' CelebA is: the centre 140x140 of the 218x178 face, resized.
    face = tf.io.decode_jpeg(tf.io.read_file(os.path.join(root, "img_align_celeba", "000021.jpg"))).numpy()
    expected = tf.image.resize(face[39:179, 19:159] / 255.0, (64, 64), antialias=True).numpy()
    np.testing.assert_allclose(images[0], np.clip(expected, 0, 1), atol=1e-5)
    # The same folder as an image_folder: list_attr_celeba.txt as is, all 40 of its columns.
    assert list(data.get_spec("image_folder", root).tasks) == CELEBA_COLUMNS


def _broken(tmp_path, case):
    """A folder with one thing wrong, and what the error must say."""
    root = tmp_path / case
    if case == "empty":
        root.mkdir()
        return str(root), "no JPEG or PNG image in"
    write_folder(root)
    labels = root / "labels.csv"
    if case == "unreadable":
        (root / "img_007.png").write_bytes(b"not an image")
        return str(root), r"1 of the 40 image files in .* cannot be read: img_007.png \(not a JPEG or PNG image\)"
    if case == "row_without_image":
        os.remove(root / "img_003.png")
        return str(root), r"labels.csv has 1 row\(s\) for images that are not in .*: img_003.png"
    if case == "image_without_row":
        labels.write_text("\n".join(labels.read_text().splitlines()[:-2]) + "\n")
        return str(root), r"labels.csv has no row for 2 of the 40 images in .*: more/img_038.jpg, more/img_039.png"
    if case == "not_an_integer":
        labels.write_text(labels.read_text().replace("0,img_002.jpg", "no,img_002.jpg"))
        return str(root), r"labels.csv, line 4: the label 'no' of column 'red' is not an integer"
    if case == "no_filename_column":
        labels.write_text(labels.read_text().replace("filename", "file"))
        return str(root), "labels.csv has no 'filename' column naming each row's image"
    if case == "ambiguous_file_name":
        (root / "other").mkdir()
        shutil.copy(root / "more" / "img_031.png", root / "other" / "img_031.png")
        return str(root), "names images by a file name that several images in .* have \\(img_031.png\\)"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "unreadable",
        "row_without_image",
        "image_without_row",
        "not_an_integer",
        "no_filename_column",
        "ambiguous_file_name",
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, case):
    root, message = _broken(tmp_path, case)
    with pytest.raises(data.DataUnavailableError, match=message) as error:
        data.get_spec("image_folder", root)
    assert "\n" not in str(error.value)
    model_dir = tmp_path / "model"
    with pytest.raises(data.DataUnavailableError, match=message):
        train.run("vae", str(model_dir), dataset="image_folder", data_dir=root, train_steps=1, **TINY)
    assert not model_dir.exists()


def test_celeba_files_without_an_attribute_or_a_file_are_refused(celeba, tmp_path):
    root = shutil.copytree(celeba[0], tmp_path / "celeba")
    attributes = root / "list_attr_celeba.txt"
    attributes.write_text(attributes.read_text().replace(" Bald ", " Hairless "))
    with pytest.raises(data.DataUnavailableError, match=r"list_attr_celeba.txt has no column Bald \(its columns: "):
        data.check_available("celeb_a", str(root))
    os.remove(attributes)
    with pytest.raises(data.DataUnavailableError, match=f"CelebA's files in {root} lack list_attr_celeba.txt: put "):
        data.check_available("celeb_a", str(root))
    with pytest.raises(data.DataUnavailableError, match="'image_folder' reads a folder .*: give data_dir="):
        data.check_available("image_folder")


def test_a_download_whose_host_does_not_answer_fails_within_seconds(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def hanging(*args, **kwargs):  # a host that never answers, as behind a firewall that drops packets
        time.sleep(60)
        raise OSError("timed out")

    def no_download(*args, **kwargs):
        raise AssertionError("tfds started a download")

    monkeypatch.setattr(data.socket, "create_connection", hanging)
    monkeypatch.setattr(data, "DOWNLOAD_PROBE_SECONDS", 1)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    started = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as error:
        data.check_available("celeb_a", str(tmp_path))
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "its download hosts (drive.google.com, storage.googleapis.com) did not answer within 1 s" in message
    assert "put CelebA's img_align_celeba/ and list_attr_celeba.txt" in message and f"in {tmp_path} " in message
    with pytest.raises(data.DataUnavailableError, match="'mnist' is not prepared .* did not answer .*tfds build mnist"):
        data.check_available("mnist", str(tmp_path))


def test_the_probe_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert data._answers("127.0.0.1", listening.getsockname()[1], 2)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        assert not data._answers("127.0.0.1", port, 2)


# `python -m train.avae` as on a machine without network: every connection attempt fails at once.
_NO_NETWORK = """
import runpy, socket

def unreachable(*args, **kwargs):
    raise OSError("network is unreachable")

socket.create_connection = unreachable
runpy.run_module("train.avae", run_name="__main__", alter_sys=True)
"""


def test_celeb_a_without_data_or_network_exits_1_within_30_seconds_and_writes_nothing(tmp_path):
    data_dir, model_dir = tmp_path / "no_celeba", tmp_path / "model"
    data_dir.mkdir()
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user has it: a quiet console
    run = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, "--dataset=celeb_a", f"--data_dir={data_dir}", f"--model_dir={model_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 30, run.stderr[-2000:]
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]  # no traceback
    error = run.stderr.strip()
    assert error.startswith("error: dataset 'celeb_a' is not prepared") and error.count(". ") == 0, error
    assert "img_align_celeba/ and list_attr_celeba.txt" in error and f"in {data_dir} " in error
    assert not model_dir.exists() or not os.listdir(model_dir)


def test_the_command_line_trains_on_a_folder_then_evaluate_export_and_serve_work(folder, tmp_path):
    model_dir = tmp_path / "avae"
    run = _command(
        "train.avae",
        "--dataset=image_folder",
        f"--data_dir={folder}",
        "--arch=mlp",
        "--latent_dim=8",
        "--batch_size=8",
        "--train_steps=4",
        "--checkpoint_every=4",
        "--eval_examples=8",
        f"--model_dir={model_dir}",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained avae to step 4" in run.stdout and "robustness check (red, linear probe" in run.stdout

    # The evaluation finds the folder in the run's flags.json and probes the labels file's tasks.
    common = Common(num_examples=16, batch_size=8, pgd_steps=2, restarts=1)
    stages = _tiny_stages(
        str(tmp_path / "cache"),
        ["accuracy"],
        attacks=("pgd",),
        epsilons=(0.0, 0.1),
        radius_examples=2,
        radius_search_steps=1,
    )
    (result,) = evaluate.run([str(model_dir)], str(model_dir), stages=stages, common=common, log=lambda _: None)
    assert result["dataset"] == "image_folder" and list(result["adversarial_accuracy"]) == ["red", "wide"]
    assert result["settings"]["data_dir"] == folder

    # Exported with its card, then served: an image file's bytes give the embedding the SavedModel gives.
    version = encoder.run(str(model_dir), str(tmp_path / "export"), "avae")
    card = pretrained.read_model_card(version)
    assert card["dataset"] == "image_folder" and card["image_shape"] == [64, 64, 3] and card["evaluation"]
    # The exported encoder is audited as its run is: the folder from its card's training flags.
    (audit,) = evaluate.run([version], str(tmp_path / "audit"), stages=stages, common=common, log=lambda _: None)
    assert audit["adversarial_accuracy"] == result["adversarial_accuracy"]
    with open(os.path.join(folder, "img_000.jpg"), "rb") as f:
        image_bytes = f.read()
    expected = reference(version)("encode_image", image_bytes=[image_bytes])["embedding"]
    server = Server(os.path.dirname(version))
    try:
        server.wait_ready()
        body = {"signature_name": "encode_image", "instances": [{"b64": base64.b64encode(image_bytes).decode()}]}
        answer = post(f"{server.url}/v1/models/avae:predict", body)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"][0]["embedding"], expected[0], rtol=1e-4, atol=1e-5)
    finally:
        server.stop()


def test_celeba_files_train_and_evaluate_with_the_17_tasks(celeba, tmp_path):
    root, _ = celeba
    result = train.run(
        "vae", str(tmp_path / "vae"), dataset="celeb_a", data_dir=root, train_steps=2, summary=True, **TINY
    )
    assert result.summary["robustness"]["task"] == data.CELEBA_ATTRIBUTES[0]
    common = Common(num_examples=8, batch_size=8, pgd_steps=1, restarts=1)
    stages = _tiny_stages(
        str(tmp_path / "cache"),
        ["accuracy"],
        attacks=("pgd",),
        epsilons=(0.0,),
        radius_examples=1,
        radius_search_steps=1,
        probe_epochs=1,
    )
    (evaluation,) = evaluate.run(
        [str(tmp_path / "vae")], str(tmp_path / "eval"), stages=stages, common=common, log=lambda _: None
    )
    assert list(evaluation["adversarial_accuracy"]) == list(data.CELEBA_ATTRIBUTES)
