from sqft_intel.finetune.loop import Example, collate, epoch_batches


def test_epoch_batches_cover_each_example_once_and_are_deterministic():
    lengths = [(i * 37) % 91 + 5 for i in range(1000)]
    b1 = epoch_batches(lengths, 16, seed=3, epoch=0)
    assert b1 == epoch_batches(lengths, 16, seed=3, epoch=0)
    assert b1 != epoch_batches(lengths, 16, seed=3, epoch=1)
    flat = [i for b in b1 for i in b]
    assert len(flat) == len(set(flat)) == 1000 - 1000 % 16  # the incomplete batch is dropped
    assert all(len(b) == 16 for b in b1)


def test_length_grouping_cuts_padding():
    import random

    lengths = [random.Random(i).randint(10, 120) for i in range(2048)]
    grouped = epoch_batches(lengths, 16, seed=0, epoch=0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in grouped)
    shuffled = list(range(2048))
    random.Random(0).shuffle(shuffled)
    naive = sum(max(lengths[i] for i in shuffled[k:k + 16]) * 16 for k in range(0, 2048, 16))
    assert padded < 0.7 * naive


def test_tiny_dataset_keeps_its_only_batch():
    assert epoch_batches([5, 6, 7], 8, seed=0, epoch=0) == [sorted([0, 1, 2], key=[5, 6, 7].__getitem__)]


def test_collate_labels_only_the_loss_tokens():
    batch = collate([Example([1, 2, 3, 4], [False, False, True, True]),
                     Example([5, 6], [False, True]),
                     Example([7, 8, 9], [False, True, False])], pad_id=0)  # e.g. two chat turns
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0], [7, 8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100],
                                        [-100, 8, -100, -100]]
