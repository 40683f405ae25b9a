"""init_ray's local start-up: retried when Ray's raylet misses its fixed start-up window on a loaded machine."""


def test_a_local_ray_that_misses_its_start_up_window_is_started_again():
    import pytest

    from raylens.runtime import LOCAL_START_TRIES, _start_local

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise Exception("The current node timed out during startup. This could happen because ...")
        return "ctx"

    assert _start_local(flaky) == "ctx" and len(calls) == 2

    def never():
        raise Exception("The current node timed out during startup.")

    with pytest.raises(RuntimeError, match=f"did not start in {LOCAL_START_TRIES} tries.*too loaded"):
        _start_local(never)

    def other():
        raise ValueError("bad num_cpus")

    with pytest.raises(ValueError, match="bad num_cpus"):
        _start_local(other)
