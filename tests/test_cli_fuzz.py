"""Bad input, generated: every sub-command, fed bad numbers, bad model names, corrupt checkpoints and bad input
files, ends in a clean non-zero exit with one line on stderr that names the bad value, and no exception escapes.

`mbconv.cli.main` runs in-process. The arguments are chosen so that validation fails before any heavy work (no
training, no export), so the whole file runs in a few seconds per thousand cases.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mbconv import cli_args
from mbconv.cli import build_parser, main
from mbconv.zoo import get_spec


def fast(n: int) -> settings:
    """`n` generated cases, no per-case deadline (a shared CPU), and none of the slow-data health checks."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


TINY = "ir_r1_k3_s1_e2_c8_se0.25;ir_r1_k3_s2_e2_c16"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `mbconv ARGV`; SystemExit counts as an exit, anything else escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own exits (none expected: the parser reports through main)
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_clean_failure(argv: list[str], *names: str) -> str:
    """The command fails with status 2, prints exactly one line on stderr, and that line names one of `names`."""
    rc, _, err = run_cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, f"{argv}: stderr is not one line: {err!r}"
    assert any(n and n in err for n in names), f"{argv}: {err!r} names none of {names}"
    return err


# -- the parser's typed flags -----------------------------------------------------------------------------
# One valid command line per sub-command (required arguments only); bad values are appended to it.
BASE = {
    "list": [], "info": ["efficientnet_b0"], "cost": ["efficientnet_b0"], "compare": [], "scale": [],
    "train": [], "eval": ["--checkpoint=run"], "predict": ["--checkpoint=run", "x.npy"], "tour": [],
    "gates": ["--checkpoint=run"], "prune": ["--checkpoint=run", "--criterion=bn", "--ratio=0.5", "--out=o"],
    "quantize": ["--checkpoint=run"], "quant-noise": ["--checkpoint=run"], "int8": [],
    "stability": ["--model=efficientnet_b0"], "scale-search": [], "export": ["efficientnet_b0"],
    "bench": ["efficientnet_b0"], "signals": [], "roofline": ["efficientnet_b0"],
    "convert": ["--weights=w.pth", "--out=o"],
}


def typed_flags() -> list[tuple[str, str, object, tuple | None]]:
    """(sub-command, flag, type function, choices) of every option that takes a value."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = []
    for name, sp in sub.choices.items():
        for a in sp._actions:
            if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction):
                rows.append((name, a.option_strings[-1], a.type, tuple(a.choices) if a.choices else None))
    return rows


FLAGS = typed_flags()
NUMBER_TYPES = {cli_args.integer, cli_args.positive_int, cli_args.nonnegative_int, cli_args.finite_float, int}


def test_every_sub_command_has_a_valid_base_line():
    names = {row[0] for row in FLAGS} | set(BASE)
    assert set(BASE) == names, f"add the new sub-commands to BASE: {names - set(BASE)}"
    for name, argv in BASE.items():
        build_parser().parse_args([name, *argv])  # raises if BASE is wrong


def test_every_number_flag_rejects_nan_inf_and_overflow():
    numeric = [(c, f, t) for c, f, t, ch in FLAGS if t in NUMBER_TYPES or getattr(t, "__name__", "").startswith(
        "float in")]
    assert len(numeric) > 60  # the table really covers the CLI
    for cmd, flag, _ in numeric:
        for bad in ("nan", "inf", "1e400"):  # the generated cases below add -inf, -1e400, "" and the rest
            assert_clean_failure([cmd, *BASE[cmd], f"{flag}={bad}"], flag)


BAD_TEXT = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e309", "",
                            " ", "abc", "1,5", "0x10", "--", "1e", "١", "½", "1_0_", "None", "true", "[]"])
NUMBERS = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=309, max_value=100000).map(lambda e: f"{'-' if e % 2 else ''}1e{e}"),
    BAD_TEXT,
    st.text(max_size=12),
)


def is_rejected(kind: object, choices: tuple | None, value: str) -> bool:
    """Whether the parser refuses `value` for an option of this type and choices."""
    if kind is not None:
        try:
            v = kind(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            return True
    else:
        v = value
    return choices is not None and v not in choices


CHECKED_FLAGS = [row for row in FLAGS if row[2] is not None or row[3] is not None]  # free text is not checked


@fast(500)
@given(row=st.sampled_from(CHECKED_FLAGS), value=NUMBERS)
def test_bad_option_values(row, value):
    cmd, flag, kind, choices = row
    assume(is_rejected(kind, choices, value))
    err = assert_clean_failure([cmd, *BASE[cmd], f"{flag}={value}"], flag)
    assert repr(value) in err or value in err, err


def test_options_without_their_value():
    """A value-taking option at the end of the line, its value missing, is named in one line too."""
    for cmd, flag, _, _ in FLAGS:
        assert_clean_failure([cmd, *BASE[cmd], flag], flag)


# -- model names and block strings ------------------------------------------------------------------------
def bad_token() -> st.SearchStrategy[tuple[str | None, str, str]]:
    """(field it replaces or None, token, what the error must name): one block-string field with a value the
    grammar refuses."""
    num = st.one_of(st.sampled_from(["nan", "inf", "-1", "x", "1.5.2", "1e400", ""]),
                    st.floats(allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(
        st.integers(-20, 0).map(lambda r: ("r", f"r{r}", str(r))),
        st.integers(-20, 40).filter(lambda k: k < 1 or k % 2 == 0).map(lambda k: ("k", f"k{k}", str(k))),
        st.integers(-5, 0).map(lambda s: ("s", f"s{s}", str(s))),
        st.sampled_from(["12", "21", "x", "1.5"]).map(lambda s: ("s", f"s{s}", s)),
        st.floats(max_value=0.999, allow_nan=False).map(lambda e: ("e", f"e{e!r}", f"{e!r}")),
        st.sampled_from(["nan", "inf", "-inf", "1e400"]).map(lambda e: ("e", f"e{e}", "expand")),
        st.integers(-5, 0).map(lambda c: ("c", f"c{c}", str(c))),
        st.floats(min_value=1.001, allow_nan=False, allow_infinity=False).map(
            lambda v: ("se", f"se{v!r}", "se_ratio")),
        st.floats(max_value=-0.001, allow_nan=False).map(lambda v: ("se", f"se{v!r}", "se_ratio")),
        st.text("qwxyzjv", min_size=1, max_size=4).map(lambda a: ("n", f"n{a}", a)),
        st.tuples(st.text("qwxyzjvlgt", min_size=1, max_size=3), num).map(
            lambda t: (None, t[0] + t[1], t[0] + t[1])),
    )


GOOD_FIELDS = {"r": "r1", "k": "k3", "s": "s1", "e": "e2", "c": "c8", "se": "se0.25"}


@st.composite
def bad_arch(draw) -> tuple[str, tuple[str, ...]]:
    """A block string with one bad field in one block, and the texts one of which the error must name."""
    field, token, named = draw(bad_token())
    fields = dict(GOOD_FIELDS)
    fields[field or "extra"] = token
    tokens = draw(st.permutations(list(fields.values())))
    bad = "_".join([draw(st.sampled_from(["ir", "er"])), *tokens])
    before = draw(st.lists(st.just("ir_r1_k3_s1_e2_c8_se0.25"), max_size=2))
    after = draw(st.lists(st.just("ir_r1_k3_s2_e6_c16"), max_size=2))
    arch = draw(st.sampled_from([";", ","])).join([*before, bad, *after])
    return arch, (named, token, bad, arch)


def is_valid_model(name: str) -> bool:
    try:
        get_spec(name)
    except ValueError:
        return False
    return True


@st.composite
def garbage_name(draw) -> tuple[str, tuple[str, ...]]:
    name = draw(st.one_of(st.text("abcdeiknrsx0123456789_;,.-", max_size=30), st.text(max_size=20)))
    assume(not is_valid_model(name))
    blocks = [repr(b)[1:-1] for b in re.split(r"[;,]", name) if b.strip()]  # or the block it is in
    return name, (name, repr(name), repr(name)[1:-1], *blocks)


def model_command(kind: str, name: str, out: str) -> list[str]:
    """A command line that builds the model `name` (the name last, after `--` where it is positional)."""
    return {
        "info": ["info", "--", name],
        "cost": ["cost", "--", name],
        "export": ["export", f"--out={out}/m.onnx", "--", name],
        "bench": ["bench", "--rounds=1", "--", name],
        "roofline": ["roofline", f"--out={out}", "--", name],
        "stability": ["stability", f"--model={name}"],
        "int8": ["int8", f"--model={name}", f"--out={out}/m.onnx"],
        "signals": ["signals", f"--model={name}", "--quick", f"--out={out}"],
        "train": ["train", f"--model={name}", "--data=digits8", "--epochs=1", f"--out={out}"],
        "scale": ["scale", f"--base={name}", "--phi=1"],
    }[kind]


MODEL_COMMANDS = ["info", "cost", "export", "bench", "roofline", "stability", "int8", "signals", "train", "scale"]


@fast(250)
@given(kind=st.sampled_from(MODEL_COMMANDS), bad=st.one_of(bad_arch(), garbage_name()))
def test_bad_model_names(tmp_path, kind, bad):
    name, named = bad
    assert not is_valid_model(name), name
    assert_clean_failure(model_command(kind, name, str(tmp_path)), *named)
    assert not list(tmp_path.iterdir()), "a failed command wrote output"


@fast(40)
@given(kind=st.sampled_from([k for k in MODEL_COMMANDS if k not in ("info", "cost", "scale")]),
       digits=st.integers(12, 40))
def test_models_too_large_to_build(tmp_path, kind, digits):
    """Valid block strings whose weights cannot fit in memory are refused before torch tries to allocate them."""
    name = f"ir_r1_k3_s1_e2_c{'9' * digits}"
    assert_clean_failure(model_command(kind, name, str(tmp_path)), "parameters")


# -- checkpoints ----------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates the file `marker`: proof that a pickle from an input file was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """An untrained tiny run on digits8 (1 channel, 8 px, 10 classes), as `mbconv train` would write it."""
    from mbconv.checkpoint import save_checkpoint
    from mbconv.data import load_dataset
    from mbconv.workflow import build_for_data, data_meta

    ds = load_dataset("digits8", "train")
    torch.manual_seed(0)
    model = build_for_data(TINY, ds.info, 8, stem_chs=8, head_chs=16, stem_stride=1)
    out = tmp_path_factory.mktemp("fuzz") / "run"
    save_checkpoint(out / "last", model, extra={"epoch": 0, "step": 0},
                    spec={"net": model.spec.to_dict(), "data": data_meta(ds, "digits8", 8)})
    return out


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)
CORRUPTIONS = ["missing", "empty_file", "random_file", "pickle_file", "torch_pickle", "empty_dir", "meta_bytes",
               "meta_json", "meta_spec_json", "meta_net_json", "flip_weights", "truncate_weights",
               "pickle_weights", "data_record", "run_of_bad_last"]


def write_corrupt_checkpoint(kind: str, draw, good: Path, root: Path, marker: Path) -> Path:
    """A checkpoint path under `root` corrupted in the way `kind` names (`draw` supplies the random parts)."""
    p = root / "ck"
    if kind == "missing":
        return root / draw(st.text("abcxyz_", min_size=1, max_size=10))
    if kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "random_file":
        p.write_bytes(draw(st.binary(max_size=200)))
    elif kind == "pickle_file":
        p.write_bytes(pickle.dumps(Payload(marker)))
    elif kind == "torch_pickle":
        torch.save({"state_dict": Payload(marker)}, p)
    elif kind == "empty_dir":
        p.mkdir()
    else:
        shutil.copytree(good / "last", p)
        meta = p / "meta.json"
        weights = p / "model.safetensors"
        if kind == "meta_bytes":
            meta.write_bytes(draw(st.binary(max_size=100)))
        elif kind == "meta_json":
            value = draw(JSON)
            assume(not (isinstance(value, dict) and "spec" in value))
            meta.write_text(json.dumps(value))
        elif kind in ("meta_spec_json", "meta_net_json"):
            m = json.loads(meta.read_text())
            value = draw(JSON)
            if kind == "meta_spec_json":
                m["spec"] = value
            else:
                m["spec"]["net"] = value
            meta.write_text(json.dumps(m))
        elif kind == "flip_weights":
            data = bytearray(weights.read_bytes())
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
            weights.write_bytes(bytes(data))
        elif kind == "truncate_weights":
            data = weights.read_bytes()
            weights.write_bytes(data[: draw(st.integers(0, len(data) - 1))])
        elif kind == "pickle_weights":
            weights.write_bytes(pickle.dumps(Payload(marker)))
        elif kind == "data_record":
            m = json.loads(meta.read_text())
            d = m["spec"]["data"]
            key = draw(st.sampled_from(["dims", "in_chans", "classes", "resolution"]))
            if key == "classes":
                d[key] = [str(i) for i in range(draw(st.integers(0, 30).filter(lambda n: n != 10)))]
            elif key == "resolution":
                d[key] = draw(st.one_of(st.integers(max_value=0), st.text(max_size=3), st.floats()))
            else:
                d[key] = draw(st.integers(-3, 5).filter(lambda v, k=key: v != d[k]))
            meta.write_text(json.dumps(m))
        elif kind == "run_of_bad_last":  # a run folder whose last/ checkpoint is corrupt
            run = root / "run"
            run.mkdir()
            p.rename(run / "last")
            (run / "last" / "model.safetensors").write_bytes(b"\0" * 16)
            return run
    return p


CHECKPOINT_COMMANDS = {
    "eval": [], "predict": ["x.npy"], "gates": [], "quantize": [], "quant-noise": [], "int8": [], "stability": [],
    "bench": [], "roofline": [], "export": ["--out={root}/m.onnx"],
    "prune": ["--criterion=bn", "--ratio=0.5", "--out={root}/pruned"],
}


@fast(250)
@given(kind=st.sampled_from(CORRUPTIONS), cmd=st.sampled_from(sorted(CHECKPOINT_COMMANDS)), data=st.data())
def test_corrupt_checkpoints(good_run, kind, cmd, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        marker = root / "PICKLE_RAN"
        ck = write_corrupt_checkpoint(kind, data.draw, good_run, root, marker)
        extra = [a.format(root=root) for a in CHECKPOINT_COMMANDS[cmd]]
        assert_clean_failure([cmd, f"--checkpoint={ck}", *extra], str(ck), str(root))
        assert not marker.exists(), "a pickle from a checkpoint was executed"


# -- input files ----------------------------------------------------------------------------------------------
DTYPES = ["float32", "float64", "int16", "uint8", "bool", "complex64", "<U3", "object"]


@st.composite
def bad_array(draw) -> np.ndarray:
    """An array `predict` must refuse for a 1-channel 2-D run: wrong rank, channels, dtype, or empty."""
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=5)))
    dtype = draw(st.sampled_from(DTYPES))
    numeric = dtype not in ("complex64", "<U3", "object")
    fits = (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)) and all(shape)
    assume(not (numeric and fits))
    if dtype == "object":
        a = np.empty(shape, dtype=object)
        a.fill(None)
        return a
    return np.zeros(shape, dtype=dtype)


INPUT_KINDS = ["array", "pickled_array", "missing", "folder", "empty", "random_bytes"]


@fast(200)
@given(kind=st.sampled_from(INPUT_KINDS), suffix=st.sampled_from([".npy", ".png", ".jpg", ".txt", ""]),
       data=st.data())
def test_bad_predict_inputs(good_run, kind, suffix, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        marker = root / "PICKLE_RAN"
        p = root / f"input{suffix}"
        if kind == "array":
            p = root / "input.npy"
            np.save(p, data.draw(bad_array()), allow_pickle=True)
        elif kind == "pickled_array":
            p = root / "input.npy"
            a = np.empty(2, dtype=object)
            a[0] = Payload(marker)
            np.save(p, a, allow_pickle=True)
        elif kind == "folder":
            p.mkdir()
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "random_bytes":
            blob = data.draw(st.binary(max_size=300))
            assume(not blob.startswith(b"\x93NUMPY"))
            p.write_bytes(blob)
        good = root / "good.npy"
        np.save(good, np.zeros((8, 8), dtype=np.float32))
        order = data.draw(st.booleans())
        inputs = [str(good), str(p)] if order else [str(p)]
        assert_clean_failure(["predict", f"--checkpoint={good_run}", *inputs], str(p))
        assert not marker.exists(), "a pickle from an input file was executed"


@fast(60)
@given(layout=st.sampled_from(["empty", "garbage_images", "file", "missing"]),
       files=st.lists(st.binary(max_size=64), min_size=1, max_size=3), cmd=st.sampled_from(["train", "gates"]),
       data=st.data())
def test_bad_data_folders(good_run, layout, files, cmd, data):
    """`--data PATH`: a missing path, a file, an empty folder or a folder of unreadable images."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "images"
        if layout == "empty":
            d.mkdir()
        elif layout == "garbage_images":
            for i, blob in enumerate(files):
                (d / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
                (d / f"class{i % 2}" / f"{i}.{data.draw(st.sampled_from(['png', 'jpg', 'bmp']))}").write_bytes(blob)
        elif layout == "file":
            d.write_bytes(files[0])
        argv = (["train", f"--model={TINY}", f"--data={d}", "--epochs=1", f"--out={Path(tmp) / 'out'}"]
                if cmd == "train" else ["gates", f"--checkpoint={good_run}", f"--data={d}", "--no-figures",
                                        f"--out={Path(tmp) / 'out'}"])
        assert_clean_failure(argv, str(d))


def test_the_fuzzed_run_is_usable(good_run, tmp_path):
    """The base of the corruptions is a good run: the failures above come from the corruption alone."""
    np.save(tmp_path / "x.npy", np.zeros((8, 8), dtype=np.float32))
    rc, out, err = run_cli(["predict", f"--checkpoint={good_run}", str(tmp_path / "x.npy")])
    assert rc == 0 and "%" in out, err
    assert os.path.exists(good_run / "last" / "meta.json")
