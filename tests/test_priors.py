"""DIP-KD's image priors (methods/priors.py) and the methods built on them:
shapes and ranges, randomness, the paper's filter by hand, one query per
stored image, and a resume that equals an uninterrupted run."""
import os

import pytest
import torch

import ideal
from methods.priors import (PriorSynthesizer, diverging_filter, hierarchical_noise, nonlinear_transform,
                            semantic_cutmix, semantic_mask)
from test_resume import Killed, kill_on
from test_scripts import run_ideal, workspace  # noqa: F401 (workspace is a fixture)
from utils.run import load_checkpoint


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_priors_are_images_of_the_dataset_shape_in_0_1(shape):
    torch.manual_seed(0)
    x, losses = PriorSynthesizer(16, shape, "cpu").synthesize()
    assert losses is None
    assert x.shape == (16, *shape) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert x.std() > 0.05  # not a flat grey


def test_priors_differ_across_a_batch_and_across_seeds():
    def batch(seed):
        torch.manual_seed(seed)
        return PriorSynthesizer(8, (1, 28, 28), "cpu").synthesize()[0]

    a, b = batch(1), batch(2)
    flat = a.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(float("inf")).min() > 1.0  # no two images alike
    assert not torch.equal(a, b)
    assert torch.equal(a, batch(1))  # the seed decides everything


def test_hierarchical_noise_mixes_scales_up_to_the_covering_power_of_two():
    torch.manual_seed(0)
    x = hierarchical_noise(5, 3, 28)
    assert x.shape == (5, 3, 32, 32)  # d_max = ceil(log2 28) = 5
    assert x.min() >= 0 and x.max() <= 1
    # a convex mix of uniform noise: its mean stays near 1/2
    assert abs(x.mean().item() - 0.5) < 0.1


def test_diverging_filter_by_hand():
    m = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    # 2 m^2 below 0.5, 1 - 2 (m - 1)^2 above: 0 -> 0, 0.25 -> 0.125, 0.75 -> 0.875, 1 -> 1
    assert torch.allclose(diverging_filter(m), torch.tensor([0.0, 0.125, 0.5, 0.875, 1.0]))


def test_semantic_mask_is_driven_to_0_and_1():
    torch.manual_seed(0)
    m = semantic_mask(4, 28)
    assert m.shape == (4, 1, 28, 28)
    assert ((m < 0.1) | (m > 0.9)).float().mean() > 0.7
    assert 0.05 < m.mean() < 0.95  # both regions are there


def test_semantic_cutmix_never_pairs_an_image_with_itself():
    torch.manual_seed(0)
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 4, 4).clone() / 10
    zero = torch.zeros(6, 1, 4, 4)
    mixed = semantic_cutmix(x, zero, mono_prob=0.0)  # mask 0: the partner alone
    assert sorted(mixed[:, 0, 0, 0].tolist()) == sorted(x[:, 0, 0, 0].tolist())  # every image is a partner once
    assert not torch.isclose(mixed[:, 0, 0, 0], x[:, 0, 0, 0]).any()
    assert torch.equal(semantic_cutmix(x, torch.ones(6, 1, 4, 4)), x)  # mask 1: the image itself
    alone = semantic_cutmix(x[:1], zero[:1], mono_prob=0.0)  # no other image: a plain colour
    assert alone.unique().numel() == 1 and not torch.equal(alone, x[:1])


def test_nonlinear_transform_crops_to_size_and_keeps_the_range():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32)
    y = nonlinear_transform(x, 28)
    assert y.shape == (3, 1, 28, 28)
    assert y.min() >= 0 and y.max() <= 1
    still = nonlinear_transform(x, 32, max_degrees=0.0, elastic_alpha=0.0)
    assert torch.allclose(still, x, atol=1e-5)  # no rotation, no warp, nothing to crop: the identity


@pytest.mark.parametrize("flags", [("--method=prior",),
                                   ("--method=ideal", "--prior_share=0.5"),
                                   ("--candidates=2", "--prior_share=0.5"),
                                   ("--candidates=3", "--prior_share=0.34", "--seed_share=0.34")])
def test_prior_methods_make_one_query_per_stored_image(workspace, flags):  # noqa: F811
    """Priors alone, in the batch, as candidates, and redrawn pool images as
    candidates too: the teacher is asked once per stored image, never more."""
    name = "prior_" + "".join(c for c in "".join(flags) if c.isalnum())
    summary, run_dir = run_ideal(workspace, "--epochs=3", "--query_budget=25", f"--exp_name={name}", *flags)
    assert summary["queries"] == summary["samples"] == 25  # 10 + 10 + the 5 the budget allows
    shares = dict(f[2:].split("=") for f in flags if "_share=" in f)
    assert {k: summary[k] for k in shares} == {k: float(v) for k, v in shares.items()}  # the summary names them
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    assert pool["images"].shape[0] == pool["answers"].shape[0] == 25


def test_prior_share_splits_the_batch():
    from methods.synthesizers import build_synthesizer
    synthesizer = build_synthesizer("ideal", (1, 28, 28), 10, "cpu", prior_share=0.3, batch_size=10, nz=8, ngf=4)
    ideal_part, prior_part = synthesizer.parts
    assert (ideal_part.batch_size, prior_part.batch_size) == (7, 3)


def test_prior_share_is_refused_where_it_means_nothing(workspace):  # noqa: F811
    with pytest.raises(ideal.UserError, match="prior_share"):
        ideal.parse_args(["--method=noise", "--prior_share=0.5", f"--save_dir={workspace['save_dir']}"])
    with pytest.raises(ideal.UserError, match="prior_share"):
        ideal.parse_args(["--prior_share=1", f"--save_dir={workspace['save_dir']}"])


@pytest.mark.parametrize("flags, kill", [
    (("--method=prior",), ("distill", 2, False)),  # in epoch 2, after its batch was labelled and saved
    (("--method=ideal", "--prior_share=0.5"), ("distill", 2, False)),
    (("--method=ideal", "--candidates=3", "--prior_share=0.34", "--seed_share=0.34"), ("distill", 2, False)),
    (("--method=prior", "--label_first", "--distill_epochs=2"), ("label", 2, True)),  # while labelling
    (("--method=prior", "--label_first", "--distill_epochs=2"), ("distill", 2, False))])  # after it
def test_a_resumed_prior_run_equals_an_uninterrupted_one(workspace, monkeypatch, flags, kill):  # noqa: F811
    tag = "".join(c for c in "".join(flags) if c.isalnum())
    base = ("--epochs=3", "--query_budget=25", *flags)
    straight, straight_dir = run_ideal(workspace, *base, f"--exp_name=straight_{tag}")
    tag += f"{kill[0]}{kill[1]}"
    with monkeypatch.context() as m:
        kill_on(m, ideal, kill[0], kill[1], after=kill[2])
        with pytest.raises(Killed):
            run_ideal(workspace, *base, f"--exp_name=killed_{tag}")
    resumed, resumed_dir = run_ideal(workspace, *base, f"--exp_name=killed_{tag}", "--resume")
    assert resumed["queries"] == straight["queries"] == 25
    assert resumed["final_acc"] == straight["final_acc"]
    a, b = (load_checkpoint(os.path.join(d, "last.pt"), "cpu") for d in (straight_dir, resumed_dir))
    assert torch.equal(a["pool"]["images"], b["pool"]["images"])
    assert torch.equal(a["pool"]["answers"], b["pool"]["answers"])
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])


def pools_trained_on(monkeypatch):
    """A list that gets the pool's size at every distillation pass of ideal.py."""
    seen, real = [], ideal.distill_epoch
    monkeypatch.setattr(ideal, "distill_epoch", lambda args, student, optimizer, pool, *rest: seen.append(
        len(pool)) or real(args, student, optimizer, pool, *rest))
    return seen


def test_label_first_labels_everything_before_the_student_trains(workspace, monkeypatch):  # noqa: F811
    """DIP-KD's protocol: the whole budget labelled, then --distill_epochs over it."""
    seen = pools_trained_on(monkeypatch)
    summary, _ = run_ideal(workspace, "--method=noise", "--label_first", "--epochs=3", "--distill_epochs=2",
                           "--query_budget=25", "--exp_name=label_first")
    assert seen == [25, 25, 25]  # the last generation epoch and the two after it, each on all 25 images
    assert summary["queries"] == summary["samples"] == 25 and summary["epochs_run"] == 5
    for flags in (["--label_first"], ["--method=noise", "--label_first"],
                  ["--method=prior", "--label_first", "--relabel_every_epoch", "--distill_epochs=1"]):
        with pytest.raises(ideal.UserError, match="label_first"):
            ideal.parse_args([*flags, f"--save_dir={workspace['save_dir']}"])


def test_label_first_trains_1_plus_distill_epochs_when_the_budget_ends_early(workspace, monkeypatch):  # noqa: F811
    """A budget spent at epoch 3 of 10 still means: label everything, then train
    the last labelling epoch and --distill_epochs (it trained every epoch from 3)."""
    seen = pools_trained_on(monkeypatch)
    summary, _ = run_ideal(workspace, "--method=noise", "--label_first", "--epochs=10", "--distill_epochs=2",
                           "--query_budget=25", "--exp_name=label_first_early")
    assert seen == [25, 25, 25] and summary["queries"] == 25


def test_label_first_refuses_a_pool_that_would_drop_paid_images(workspace):  # noqa: F811
    with pytest.raises(ideal.UserError, match="raise --pool_batches"):
        ideal.parse_args(["--method=noise", "--label_first", "--epochs=3", "--distill_epochs=1", "--pool_batches=2",
                          f"--save_dir={workspace['save_dir']}"])


def test_label_first_refuses_more_labelling_once_the_student_trained(workspace, monkeypatch):  # noqa: F811
    """Killed in the first training pass (epoch --epochs), a run may not be
    resumed with more labelling epochs: the student has seen part of the pool."""
    flags = ("--method=noise", "--label_first", "--distill_epochs=1", "--exp_name=label_first_grow")
    with monkeypatch.context() as m:
        kill_on(m, ideal, "distill_epoch", 2)
        with pytest.raises(Killed):
            run_ideal(workspace, *flags, "--epochs=2")
    with pytest.raises(ideal.UserError, match="--epochs cannot change"):
        run_ideal(workspace, *flags, "--epochs=4", "--resume")


def test_prior_candidates_beside_the_generator_keep_the_batch_least_sure():
    """--candidates=2 --prior_share=0.5: B generator images and B priors compete,
    and B of them are kept, balanced over classes; the generator selects nothing itself."""
    from methods.synthesizers import MixedSynthesizer, build_synthesizer
    from models import build_model
    torch.manual_seed(0)
    synthesizer = build_synthesizer("ideal", (1, 28, 28), 10, "cpu", prior_share=0.5, batch_size=20, nz=8, ngf=4,
                                    g_steps=1, candidates=2)
    assert isinstance(synthesizer, MixedSynthesizer) and synthesizer.keep == 20
    ideal_part, prior_part = synthesizer.parts
    assert (ideal_part.batch_size, ideal_part.candidates, prior_part.batch_size) == (20, 1, 20)
    x, losses = synthesizer.synthesize(build_model("lenet", 1, 28, 10))
    assert x.shape == (20, 1, 28, 28) and set(losses) == {"loss", "ce", "info"}


def test_rare_seeds_draw_every_class_alike_and_stay_images():
    """Pool images are drawn with weight 1/(their class's count): a class the
    teacher named once is drawn as often as one it named 90 times."""
    from methods.synthesizers import RareSeedSynthesizer
    from utils.pool import SyntheticPool, to_uint8
    torch.manual_seed(0)
    pool = SyntheticPool(1000)
    answers = torch.tensor([0] * 90 + [1] * 9 + [2])
    images = torch.zeros(100, 1, 28, 28)
    images[:, 0, 10:18, 10:18] = (answers.float()[:, None, None] + 1) / 3  # class k: a square of grey (k+1)/3
    pool.add(to_uint8(images), answers)
    seeds = RareSeedSynthesizer(pool, 3000, (1, 28, 28), "cpu", classes=3, max_degrees=0.0, elastic_alpha=0.0)
    x, losses = seeds.synthesize()
    assert losses is None and x.shape == (3000, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    drawn = (x[:, 0, 14, 14] * 3 - 1).round().long()  # the centre pixel names the class drawn
    shares = torch.bincount(drawn, minlength=3).float() / len(x)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.04)
    warped = RareSeedSynthesizer(pool, 8, (1, 28, 28), "cpu", classes=3).synthesize()[0]
    assert warped.std(0).sum() > 0 and 0 <= warped.min() and warped.max() <= 1  # moved, differently per image


def test_rare_seeds_stand_in_priors_until_the_pool_has_images():
    from methods.synthesizers import RareSeedSynthesizer
    from utils.pool import SyntheticPool
    x, _ = RareSeedSynthesizer(SyntheticPool(10), 4, (1, 28, 28), "cpu", classes=10).synthesize()
    assert x.shape == (4, 1, 28, 28) and x.std() > 0.05


def test_shares_that_leave_the_generator_nothing_are_refused(workspace):  # noqa: F811
    for flags, message in ((["--prior_share=0.5", "--seed_share=0.5"], "together give 250 of the 250"),
                           (["--candidates=2", "--prior_share=0.3", "--seed_share=0.3"], "fewer than --batch_size"),
                           (["--candidates=2", "--seed_share=0.8"], "^--seed_share give 0.80 .*raise --candidates"),
                           (["--seed_share=0.5", "--relabel_every_epoch"], "cached answers"),
                           (["--seed_share=0.5", f"--pool_batches={2 ** 17}"], "2\\^24.*= 32,768,000: lower either"),
                           (["--method=prior", "--seed_share=0.5"], "seed_share")):
        with pytest.raises(ideal.UserError, match=message):
            ideal.parse_args([*flags, f"--save_dir={workspace['save_dir']}"])
