"""The recipe's quality table (audiox.distill.evaluate.quality_markdown) against the bars."""
from audiox_engine.audiox.distill.evaluate import quality_markdown


def test_quality_markdown_table_and_bars():
    def m(fd, err):
        return {"fd": fd, "kind_accuracy": 0.75, "semitone_accuracy": 0.5, "median_semitone_error": err,
                "num_items": 32, "num_tones": 8, "seconds": 3.0}

    table = quality_markdown({"data": m(1.0, 0.0), "teacher_4": m(40.0, 3.0), "teacher_50": m(10.0, 0.5),
                              "student_4": m(12.0, 0.8)})
    lines = table.splitlines()
    assert lines[0].startswith("| system |") and len([l for l in lines if l.startswith("| ")]) == 2 + 4
    assert "| student_4 | 12.000 | 0.75 | 0.50 | 0.80 | 32 (8) | 3.0 |" in table
    assert "teacher_50 FD = 1.20 (bar <= 1.3: met)" in table
    assert "teacher_4 FD = 0.30 (bar <= 0.5: met)" in table
    assert "0.80 semitones (bar <= 1: met)" in table
    failing = quality_markdown({"teacher_4": m(10.0, None), "teacher_50": m(5.0, None), "student_4": m(8.0, 2.0)})
    assert "teacher_50 FD = 1.60 (bar <= 1.3: NOT met)" in failing and "(bar <= 0.5: NOT met)" in failing
    assert "2.00 semitones (bar <= 1: NOT met)" in failing and "| teacher_4 | 10.000 | 0.75 | 0.50 | - |" in failing
