from mist_debias.loop.control.kept import share_bounds, surely_lost


def test_lost_only_when_both_intervals_agree():
    # unedited: 190 of 200 show the concept (0.95); edited: 120 of 200 (0.60): surely below 95% of 0.95
    assert surely_lost(120, 200, 190, 200, 0.05)
    # 0.88 vs 0.95: below 95% (0.9025) as a point estimate, but not surely on 200 images
    assert not surely_lost(176, 200, 190, 200, 0.05)
    # with ten times the images 0.86 vs 0.95 is surely apart
    assert surely_lost(1720, 2000, 1900, 2000, 0.05)
    assert not surely_lost(0, 0, 190, 200, 0.05)


def test_share_bounds_contain_the_share():
    lower, upper = share_bounds(30, 40, 0.05)
    assert lower < 0.75 < upper
