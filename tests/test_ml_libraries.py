"""transformers and datasets load real content through hubmirror."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Fixture
from helpers import Server, run_client

pytestmark = pytest.mark.e2e

XET = [pytest.param(True, id="xet"), pytest.param(False, id="no-xet")]


@pytest.mark.parametrize("xet", XET)
def test_transformers_autoconfig_and_autotokenizer_on_minilm(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    res = run_client(
        """
        from transformers import AutoConfig, AutoTokenizer
        cfg = AutoConfig.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        tok = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
        ids = tok("Hello mirror world")["input_ids"]
        out({"model_type": cfg.model_type, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
             "ids": ids, "tok": type(tok).__name__})
        """,
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    assert res["model_type"] == "bert" and res["hidden"] == 384 and res["layers"] == 6
    # [CLS] hello mirror world [SEP] in the uncased BERT vocabulary
    assert res["ids"][0] == 101 and res["ids"][-1] == 102 and len(res["ids"]) == 5
    assert "Bert" in res["tok"]


@pytest.mark.parametrize("xet", XET)
def test_datasets_load_csv_and_parquet(server: Server, fixture_data: Fixture, hf_home: Path, xet: bool) -> None:
    res = run_client(
        """
        import datasets
        csv = datasets.load_dataset("acme/ds", split="train")
        pq = datasets.load_dataset("acme/pq", split="train")
        out({"csv_rows": csv.num_rows, "csv_cols": csv.column_names, "first": csv[0],
             "pq_rows": pq.num_rows, "pq_last": pq[99]})
        """,
        server.url, hf_home, xet=xet,
    )
    assert "error" not in res, res
    assert res["csv_rows"] == 50 and res["csv_cols"] == ["text", "label"]
    assert res["first"] == {"text": "row 0", "label": 0}
    assert res["pq_rows"] == 100 and res["pq_last"] == {"x": 99, "y": "v99"}
