import pytest

from compresslab import report
from compresslab.__main__ import main


@pytest.mark.slow
def test_readme_results_table_is_what_the_report_computes():
    """README.md's results table = `python -m compresslab report` on the committed checkpoints
    (all columns but the latency, which moves from run to run)."""
    computed = report.markdown(report.results(latency=False))
    assert report.without_column(report.readme_table()) == report.without_column(computed)


def test_readme_block_and_column_helpers():
    text = f"intro\n{report.START}\n| a | b |\n|---|---|\n| 1 | 2 |\n{report.END}\nrest"
    assert report.readme_table(text) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert report.without_column("| a | b |\n|---|---|\n| 1 | 2 |", "b") == "| a |\n|---|\n| 1 |"
    with pytest.raises(ValueError, match="no <!-- report:start -->"):
        report.readme_table("no table here")


def test_report_rejects_unknown_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--bogus"])
    assert e.value.code == 2
