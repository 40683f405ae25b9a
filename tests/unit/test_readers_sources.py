"""``open_source`` dispatches through the source registry; every reader's result is one ``ReadResult`` type."""

import pytest

from raylens.data import SOURCES, FixedReport, IngestReport, ReadResult, describe_sources, open_source, register_source
from raylens.data.images import ClipPreprocess


@pytest.fixture
def toy_source():
    """A source registered for one test (a real registration through the public decorator)."""
    opened = []

    @register_source("toylist", accepts=lambda spec: spec.startswith("toy://"), describe="toy://ITEMS", priority=1)
    def _open(spec, preprocess=None, *, split=None, seed=0, **options):
        items = spec.removeprefix("toy://").split(",")
        opened.append((spec, split, options))
        return ReadResult(items, f"toy:{len(items)}", FixedReport(IngestReport(spec, n_ok=len(items))))

    yield opened
    SOURCES._entries.pop("toylist")  # the registry has no public removal; keep other tests' view clean


def test_a_registered_source_is_found_by_its_accepts_and_by_kind(toy_source, tmp_path):
    result = open_source("toy://a,b,c", batch_size=2)
    assert result.dataset == ["a", "b", "c"] and result.name == "toy:3" and result.report().n_ok == 3
    assert "toy://ITEMS" in describe_sources()
    # KIND:SPEC picks the source by name, whatever its accepts says
    assert open_source("toylist:x,y", split="s").dataset == ["x", "y"]
    assert toy_source == [("toy://a,b,c", None, {"batch_size": 2}), ("x,y", "s", {})]


def test_builtin_kinds_accept_their_specs(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "pq").mkdir()
    (tmp_path / "pq" / "part-0.parquet").write_bytes(b"")
    accepts = {n: SOURCES.get(n).accepts for n in ("digits", "webdataset", "captions", "folder")}
    assert accepts["digits"]("digits") and not accepts["digits"]("digits.csv")
    assert accepts["webdataset"]("shards/{00000..00009}.tar") and accepts["webdataset"]("s/*.tar")
    assert accepts["captions"]("x.tsv") and accepts["captions"](str(tmp_path / "pq"))
    assert not accepts["captions"](str(tmp_path / "cats")) and accepts["folder"](str(tmp_path / "cats"))
    # a folder of parquet files is a captions source, tried before the class-folder catch-all
    order = [s for s in ("captions", "folder") if SOURCES.get(s).accepts(str(tmp_path / "pq"))]
    assert order == ["captions", "folder"] and SOURCES.get("captions").priority < SOURCES.get("folder").priority


def test_packs_register_sources_through_their_plugins():
    describe_sources()  # loads the plug-ins
    assert "dicom" in SOURCES and "DICOMDIR" in SOURCES.describe("dicom")


def test_unknown_spec_names_it_and_lists_the_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nope' is not a file or folder.*dicom:FOLDER.*captions file"):
        open_source(str(tmp_path / "nope"), ClipPreprocess(8))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"notes.txt' is no kind raylens can read; give 'digits'.*KIND one of"):
        open_source(str(tmp_path / "notes.txt"), ClipPreprocess(8))


def test_sources_refuse_what_they_cannot_honour_before_reading(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="class folders have no splits"):
        open_source(str(tmp_path / "cats"), ClipPreprocess(8), split="train")
    with pytest.raises(ValueError, match="need an image transform: pass preprocess=model.preprocess"):
        open_source("digits")
    with pytest.raises(ValueError, match="the digits source takes no path"):
        open_source("digits:heldout", ClipPreprocess(8))
    with pytest.raises(TypeError, match="preprocess=None or a VolumeTransformConfig"):
        open_source(f"dicom:{tmp_path}", ClipPreprocess(8))


def test_read_result_validates_its_fields():
    report = FixedReport(IngestReport("x", n_ok=1))
    assert ReadResult([], "x", report, classes=("a", "b")).classes == ["a", "b"]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ReadResult([], "", report)
    with pytest.raises(TypeError, match="wrap a finished report in FixedReport"):
        ReadResult([], "x", IngestReport("x"))
    with pytest.raises(TypeError, match="classes must be a list of strings"):
        ReadResult([], "x", report, classes="abc")
