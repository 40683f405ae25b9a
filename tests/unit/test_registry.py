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
