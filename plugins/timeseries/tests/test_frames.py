"""Users' tables: long and wide formats, files, frequencies, and one line for each problem."""

import numpy as np
import pandas as pd
import pytest

from carl_timeseries.frames import SeriesDataError, read_table, series_of, to_long


def long_table():
    return pd.DataFrame({"unique_id": ["a"] * 5 + ["b"] * 4,
                         "ds": list(pd.date_range("2020-01-01", periods=5, freq="MS")) + list(pd.date_range("2019-01-01", periods=4, freq="QS")),
                         "y": [1.0, 2, 3, 4, 5, 10, 20, 30, 40]})


def test_long_and_wide_tables_give_the_same_series_with_their_frequencies(tmp_path):
    series = series_of(to_long(long_table()))
    assert [s.uid for s in series] == ["a", "b"] and [s.freq for s in series] == ["MS", "QS-OCT"]
    assert series[0].future(2).tolist() == [pd.Timestamp("2020-06-01"), pd.Timestamp("2020-07-01")]
    wide = pd.DataFrame({"date": ["2004Q1", "2004Q2", "2004Q3", "2004Q4"], "x": [1, 2, 3, 4], "z": [5.0, 6, 7, 8]})
    wide.to_parquet(tmp_path / "w.parquet")
    got = series_of(to_long(read_table(tmp_path / "w.parquet")))
    assert [s.uid for s in got] == ["x", "z"] and got[1].values.tolist() == [5, 6, 7, 8]
    assert got[0].label(got[0].future(1)[0]) == "2005Q1"
    shuffled = long_table().sample(frac=1.0, random_state=0)  # rows in any order: sorted by date per series
    assert {s.uid: s.values.tolist() for s in series_of(to_long(shuffled))}["a"] == [1, 2, 3, 4, 5]
    steps = series_of(to_long(pd.DataFrame({"unique_id": "s", "ds": [3, 4, 5, 6], "y": [1.0, 2, 3, 4]})))[0]
    assert steps.future(2).tolist() == [7, 8]  # integer time steps


@pytest.mark.parametrize("rows, message", [
    ({"y": [1.0, np.nan, 3, 4, 5]}, r"series 'a' has no value at 2020-02-01: fill the missing value"),
    ({"y": [1.0, "x", 3, 4, 5]}, r"series 'a' holds 'x' at 2020-02-01: not a number"),
    ({"y": [1.0, np.inf, 3, 4, 5]}, r"series 'a' is infinite at 2020-02-01 \(or beyond float32's range"),
    ({"y": [1.0, 1e308, 3, 4, 5]}, r"series 'a' is infinite at 2020-02-01 \(or beyond float32's range"),
    ({"ds": pd.to_datetime(["2020-01-01", "2020-02-01", "2020-04-01", "2020-05-01", "2020-06-01"])},
     r"series 'a' is not evenly spaced: 2020-02-01 is followed by 2020-04-01"),
    ({"ds": pd.to_datetime(["2020-01-01", "2020-02-01", "2020-02-01", "2020-03-01", "2020-04-01"])},
     r"series 'a' has the date 2020-02-01 twice"),
    ({"ds": ["2020-01-01", "soon", "2020-03-01", "2020-04-01", "2020-05-01"]}, r"series 'a': the ds column holds a value that is not a date"),
])
def test_each_problem_is_one_line_naming_the_series_and_the_date(rows, message):
    table = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2020-01-01", periods=5, freq="MS"), "y": [1.0, 2, 3, 4, 5]})
    for k, v in rows.items():
        table[k] = v
    with pytest.raises(SeriesDataError, match=message) as info:
        series_of(to_long(table), "t.csv")
    assert "\n" not in str(info.value) and str(info.value).startswith("t.csv: ")


def test_table_shape_and_file_errors(tmp_path):
    with pytest.raises(SeriesDataError, match="has 2 observations; at least 8 are needed"):
        series_of(to_long(long_table().iloc[:2]), "t", min_length=8)
    with pytest.raises(SeriesDataError, match="no date column .* unique_id, ds, y .* ds or date or timestamp or time"):
        to_long(pd.DataFrame({"when": [1], "x": [2]}), "t")
    with pytest.raises(SeriesDataError, match="long table has the columns unique_id, ds, y only; remove 'extra'"):
        to_long(long_table().assign(extra=1), "t")
    with pytest.raises(SeriesDataError, match="no such file"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "s.xlsx").write_text("x")
    with pytest.raises(SeriesDataError, match=r"\.csv or \.parquet files, not \.xlsx"):
        read_table(tmp_path / "s.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SeriesDataError, match="bad.parquet: cannot read it as parquet"):
        read_table(tmp_path / "bad.parquet")
