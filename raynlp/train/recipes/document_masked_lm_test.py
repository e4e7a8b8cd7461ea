import numpy as np
import pytest

from raynlp.data.packing import document_positions

CLS, SEP, PAD, MASK = 2, 3, 0, 4


@pytest.fixture(scope="module")
def models():
    import keras
    import keras_hub

    from raynlp.train.recipes.document_masked_lm import DocumentMaskedLM

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=16)
    plain = keras_hub.models.BertMaskedLM(backbone)
    return plain, DocumentMaskedLM(plain)


def inputs(window, mask_positions, documents=True):
    ids = np.asarray([window], dtype=np.int32)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != PAD,
         "mask_positions": np.asarray([mask_positions], dtype=np.int32)}
    if documents:
        x.update(document_positions(ids, sep_id=SEP, pad_id=PAD))
    return x


def test_each_document_of_a_window_is_computed_as_in_a_row_of_its_own(models):
    """A window of two documents: the first's predictions equal the plain masked LM's on it alone in a row, and
    neither document's depend on the other's tokens."""
    plain, documents = models
    window = [CLS, 10, MASK, 12, SEP, 20, 21, MASK, SEP, PAD, PAD, PAD]
    first, second = [1, 2, 3], [5, 6, 7]
    packed = documents.predict_on_batch(inputs(window, first + second))

    row = [CLS, 10, MASK, 12, SEP] + [PAD] * 7
    alone = plain.predict_on_batch(inputs(row, first, documents=False))
    np.testing.assert_allclose(packed[0, :3], alone[0], atol=1e-5)

    # The second document's predictions stay when the first's tokens change, and when its length moves the
    # second along the window (its positions count from its own start).
    other_first = [CLS, 30, 31, MASK, SEP] + window[5:]
    np.testing.assert_allclose(documents.predict_on_batch(inputs(other_first, first + second))[0, 3:],
                               packed[0, 3:], atol=1e-5)
    shorter_first = [CLS, 30, SEP] + window[5:] + [PAD, PAD]
    np.testing.assert_allclose(documents.predict_on_batch(inputs(shorter_first, [1, 1, 1, 3, 4, 5]))[0, 3:],
                               packed[0, 3:], atol=1e-5)
    other_second = window[:5] + [33, 34, 35, SEP, PAD, PAD, PAD]
    np.testing.assert_allclose(documents.predict_on_batch(inputs(other_second, first + second))[0, :3],
                               packed[0, :3], atol=1e-5)
    # The plain masked LM on the same window lets the documents read each other.
    across = plain.predict_on_batch(inputs(other_first, first + second, documents=False))
    assert not np.allclose(across[0, 3:], plain.predict_on_batch(inputs(window, first + second, documents=False))[0, 3:],
                           atol=1e-5)


def test_the_backbone_is_the_plain_one_and_no_weight_is_added(models):
    plain, documents = models
    assert documents.backbone is plain.backbone
    assert [v.path for v in documents.weights] == [v.path for v in plain.weights]
