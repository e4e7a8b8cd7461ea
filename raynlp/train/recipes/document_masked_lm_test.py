import numpy as np
import pytest

from raynlp.data.packing import document_positions

CLS, SEP, PAD, MASK = 2, 3, 0, 4


def masked_lms(num_layers):
    import keras
    import keras_hub

    from raynlp.train.recipes.document_masked_lm import DocumentMaskedLM

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=40, num_layers=num_layers, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=16)
    plain = keras_hub.models.BertMaskedLM(backbone)
    return plain, DocumentMaskedLM(plain)


@pytest.fixture(scope="module")
def models():
    return masked_lms(num_layers=2)


def inputs(window, mask_positions, documents=True):
    ids = np.asarray([window], dtype=np.int32)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != PAD,
         "mask_positions": np.asarray([mask_positions], dtype=np.int32)}
    if documents:
        x.update(document_positions(ids, sep_id=SEP, pad_id=PAD))
    return x


WINDOW = [CLS, 10, MASK, 12, SEP, 20, 21, MASK, SEP, PAD, PAD, PAD]
FIRST_ROW, FIRST = [CLS, 10, MASK, 12, SEP] + [PAD] * 7, [1, 2, 3]
SECOND_ROW, SECOND = [CLS, 20, 21, MASK, SEP] + [PAD] * 7, [1, 2, 3]  # as placed in WINDOW: [5, 6, 7]


def test_each_document_of_a_window_is_computed_as_in_a_row_of_its_own():
    """One layer, where the window's [CLS] that a later document reads is its row's: each document's predictions
    equal the plain masked LM's on it alone in a row ([CLS], its positions from 1, attending to nothing else)."""
    plain, documents = masked_lms(num_layers=1)
    packed = documents.predict_on_batch(inputs(WINDOW, [1, 2, 3, 5, 6, 7]))
    np.testing.assert_allclose(packed[0, :3], plain.predict_on_batch(inputs(FIRST_ROW, FIRST, False))[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:], plain.predict_on_batch(inputs(SECOND_ROW, SECOND, False))[0], atol=1e-5)


def test_with_more_layers_the_first_document_stays_exact_and_reads_nothing_of_the_next(models):
    plain, documents = models
    packed = documents.predict_on_batch(inputs(WINDOW, [1, 2, 3, 5, 6, 7]))
    np.testing.assert_allclose(packed[0, :3], plain.predict_on_batch(inputs(FIRST_ROW, FIRST, False))[0], atol=1e-5)
    # The first document's predictions stay when the second's tokens change.
    other_second = WINDOW[:5] + [33, 34, 35, SEP, PAD, PAD, PAD]
    np.testing.assert_allclose(documents.predict_on_batch(inputs(other_second, [1, 2, 3, 5, 6, 7]))[0, :3],
                               packed[0, :3], atol=1e-5)
    # The plain masked LM on the same window lets the documents read each other.
    across = plain.predict_on_batch(inputs(other_second, [1, 2, 3, 5, 6, 7], documents=False))
    assert not np.allclose(across[0, :3], plain.predict_on_batch(inputs(WINDOW, [1, 2, 3], documents=False))[0],
                           atol=1e-5)


def test_the_backbone_is_the_plain_one_and_no_weight_is_added(models):
    plain, documents = models
    assert documents.backbone is plain.backbone
    assert [v.path for v in documents.weights] == [v.path for v in plain.weights]
