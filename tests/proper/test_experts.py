"""PROPER's loadable model: how a user without a stage-2 row is placed on the groups."""

import torch


def test_new_user_embedding_by_projection_or_by_nearest_train_users():
    import numpy as np

    from ownlm.proper import GroupModel

    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])  # learned rows of 3 train users
    train_vectors = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    mu, proj = torch.zeros(3), torch.eye(3)[:, :2]
    meta = {"new_user": "neighbours", "neighbours": 2}
    gm = GroupModel(None, None, meta, table, mu, proj, {}, train_vectors)
    new = np.array([1.0, 0.05, 0.0], dtype=np.float32)  # closest to train users 0 and 1
    torch.testing.assert_close(gm.embed(new), torch.tensor([[0.5, 0.5]]))
    gm.meta = {"new_user": "projection"}
    torch.testing.assert_close(gm.embed(new), torch.tensor([[1.0, 0.05]]))
