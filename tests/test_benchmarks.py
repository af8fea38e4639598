"""The benchmark scripts run (tiny sizes): their decode checks hold and they
print one line per configuration."""
import pytest

from benchmarks import compress_bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compress_bench_times_fused_and_separate_heads(capsys):
    compress_bench.main(["--models", "mnist", "--chains", "2", "--steps", "1", "--repeats", "1",
                         "--heads", "fused,separate"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mnist")]
    assert [("fused heads" in ln, "separate heads" in ln) for ln in lines] == [(1, 0), (0, 1)]
    assert all("encode" in ln and "decode" in ln for ln in lines)


def test_compress_bench_rejects_unknown_heads(capsys):
    with pytest.raises(SystemExit) as exc:
        compress_bench.main(["--heads", "fused,other"])
    assert exc.value.code == 2 and "--heads" in capsys.readouterr().err
