import itertools

from co2s.data.sampler import ResumableSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resumed_stream_continues_exactly():
    full = _take(ResumableSampler(10, seed=5), 37)
    resumed = _take(ResumableSampler(10, seed=5, start=23), 14)
    assert resumed == full[23:]


def test_each_epoch_is_a_permutation_and_seeds_are_unique():
    draws = _take(ResumableSampler(10, seed=1), 30)
    for epoch in range(3):
        assert sorted(i for i, _ in draws[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert len({s for _, s in draws}) == 30
    assert [i for i, _ in draws[:10]] != [i for i, _ in draws[10:20]]


def test_ranks_split_an_epoch_without_overlap():
    a = _take(ResumableSampler(10, seed=2, rank=0, world_size=2), 5)
    b = _take(ResumableSampler(10, seed=2, rank=1, world_size=2), 5)
    assert sorted(i for i, _ in a + b) == list(range(10))
    assert not {s for _, s in a} & {s for _, s in b}
