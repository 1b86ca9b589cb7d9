import pytest

from ownlm.data.records import Item

pytestmark = pytest.mark.slow  # loads the MiniLM encoder (~8 s on CPU)


def test_embed_texts_shape_and_norm():
    import numpy as np

    from ownlm.retrieval.dense import embed_texts

    emb = embed_texts(["a movie about space", "a cooking show"])
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert embed_texts([]).shape == (0, 384)


def test_dense_index_same_interface():
    from ownlm.retrieval.dense import DenseIndex, load_encoder

    texts = ["astronauts travel to mars", "a chef bakes bread", "rockets launch into orbit"]
    items = [Item(id=str(i), fields={}) for i in range(3)]
    index = DenseIndex(items, texts)
    assert index.top_k("space exploration", k=1)[0].id in {"0", "2"}
    assert [it.id for it in index.top_k("space", k=3, before=2, exclude_ids={"0"})] == ["1"]
    assert index.top_k("space", k=0) == []
    assert load_encoder() is load_encoder()
