import pytest

from raylens.registry import Registry


def test_register_create_and_list():
    reg = Registry("thing")

    @reg.register("alpha-one", doc="first")
    def _a(x=1):
        return x * 2

    assert reg.create("alpha-one", x=4) == 8
    assert reg.create("alpha-one", x=None) == 2  # None overrides are dropped, defaults apply
    assert reg.names("alpha*") == ["alpha-one"] and reg.describe("alpha-one") == "first"


def test_unknown_name_lists_close_matches():
    reg = Registry("thing")
    reg.register("resnet18")(lambda: 1)
    with pytest.raises(KeyError, match="Did you mean: resnet18"):
        reg.get("resnet81")


def test_metadata_filters_and_unregister():
    reg = Registry("thing")
    reg.register("a", doc="first", colour="red")(lambda: 1)
    reg.register("b", colour="blue", size=2)(lambda: 2)
    assert reg.meta("b") == {"colour": "blue", "size": 2}
    assert reg.names(colour="red") == ["a"] and reg.names(size=2) == ["b"] and reg.names(size=3) == []
    reg.meta("a")["colour"] = "green"  # a copy: the registry keeps its own
    assert reg.names(colour="red") == ["a"]
    reg.unregister("a")
    assert "a" not in reg and reg.names() == ["b"]
    with pytest.raises(KeyError, match="Did you mean: b"):
        reg.meta("bb")
