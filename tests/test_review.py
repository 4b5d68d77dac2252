"""Human review of the gate: the queue, labels as data of record, the API's refusals, and the review
page driven in a real browser (Debian's chromium through selenium)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from synth_pipelines.resources import EmbedderResource, LLMResource, WarehouseResource
from synth_pipelines.runner import materialize_domain
from synth_pipelines.service.models import Conflict, NotFound, ServiceSettings
from synth_pipelines.service.operations import SynthService
from synth_pipelines.validation.review import (
    LabelIn,
    ReviewItem,
    content_hash,
    current_labels,
    review_queue,
)

DOMAIN = "api_development"
TOKEN = "review-token-123"
LATER = {"example_embeddings", "example_index", "compiled_program"}


def _item(example_id: str, *, verdict: str = "accepted", stage: str | None = None, consensus=None, cell="c1"):
    return ReviewItem(
        example_id=example_id,
        content_hash=content_hash(f'{{"x": "{example_id}"}}'),
        cell_id=cell,
        example={"x": example_id},
        verdict=verdict,  # type: ignore[arg-type]
        stage=stage,
        consensus=consensus,
        threshold=0.6,
    )


def test_the_queue_takes_turns_across_strata_closest_calls_first_and_never_repeats() -> None:
    items = [
        _item("far-ok", consensus=0.99),
        _item("near-ok", consensus=0.62),
        _item("near-bad", verdict="rejected", stage="consensus", consensus=0.58),
        _item("rules", verdict="rejected", stage="rules"),
        _item("other-cell", consensus=0.63, cell="c2"),
    ]
    queue = [i.example_id for i in review_queue(items, set(), 5)]
    # The closest calls of every stratum come before any far one, both verdicts included.
    assert set(queue[:3]) == {"near-ok", "near-bad", "other-cell"}
    assert set(queue) == {i.example_id for i in items}
    done = {(i.example_id, i.content_hash) for i in items if i.example_id in {"near-ok", "near-bad"}}
    again = [i.example_id for i in review_queue(items, done, 10)]
    assert "near-ok" not in again and "near-bad" not in again and len(again) == 3
    assert [i.example_id for i in review_queue(items, set(), 2)] == queue[:2]


def test_a_label_counts_only_for_the_content_it_judged() -> None:
    old = _item("a")
    label = {"reviewer": "alice", "example_id": "a", "content_hash": old.content_hash, "label": "good"}
    assert current_labels([label], [old]) == [label]
    regenerated = old.model_copy(update={"content_hash": content_hash('{"x": "new text"}')})
    assert current_labels([label], [regenerated]) == []
    # Each reviewer's latest label of a row is the one that counts.
    relabel = {**label, "label": "bad"}
    assert current_labels([label, relabel], [old]) == [relabel]


def test_label_input_is_checked() -> None:
    ok = LabelIn(example_id="a", content_hash="0" * 64, label="good", reviewer="alice@team")
    assert ok.reason == ""
    for bad in (
        {"content_hash": "xyz"},
        {"label": "maybe"},
        {"reviewer": "../etc"},
        {"reason": "x" * 501},
    ):
        with pytest.raises(ValueError):
            LabelIn(**{"example_id": "a", "content_hash": "0" * 64, "label": "good", **bad})


def _generated(root: Path, schemas: Path, count: int) -> SynthService:
    """The domain generated and validated on the scripted provider, and a service over it."""
    import dagster as dg

    resources = {
        "warehouse": WarehouseResource(root=str(root), schemas_dir=str(schemas)),
        "llm": LLMResource(profile="local"),
        "embedder": EmbedderResource(),
    }
    with dg.instance_for_test() as instance:
        assert materialize_domain(
            DOMAIN, instance=instance, resources=resources, skip=LATER, target_count=count
        ).success
    return SynthService(
        ServiceSettings(warehouse_root=str(root), state_dir=None, schemas_dir=str(schemas), profile="local")
    )


@pytest.fixture
def reviewed(tmp_path: Path, scripted_schemas_dir: Path, scripted_backends) -> SynthService:
    return _generated(tmp_path / "warehouse", scripted_schemas_dir, 12)


def test_labels_are_recorded_checked_and_kept_per_reviewer(reviewed: SynthService) -> None:
    queue = reviewed.review_queue(DOMAIN, count=50, reviewer="alice")
    items = queue.items
    assert len(items) >= 6 and {i.verdict for i in items} == {"accepted", "rejected"}
    assert queue.progress.labelled == 0 and queue.progress.queued == len(items)
    first, second = items[0], items[1]
    progress = reviewed.record_label(
        DOMAIN,
        LabelIn(example_id=first.example_id, content_hash=first.content_hash, label="bad", reviewer="alice"),
    )
    assert progress.labelled == 1 and progress.queued == len(items) - 1
    assert progress.agree == int(first.verdict == "rejected")
    reviewed.record_label(
        DOMAIN,
        LabelIn(
            example_id=second.example_id, content_hash=second.content_hash, label="good", reviewer="alice"
        ),
    )
    # Alice never sees her rows again; Bob's queue and counts are his own.
    alice = reviewed.review_queue(DOMAIN, count=50, reviewer="alice")
    assert {first.example_id, second.example_id}.isdisjoint(i.example_id for i in alice.items)
    bob = reviewed.review_queue(DOMAIN, count=50, reviewer="bob")
    assert bob.progress.labelled == 0 and first.example_id in {i.example_id for i in bob.items}
    # The labels are an append-only dataset, mirrored to DuckDB, with the gate's verdict of the time.
    with reviewed.warehouse.duckdb() as conn:
        rows = conn.execute(
            "SELECT reviewer, example_id, label, gate_verdict FROM review_labels ORDER BY labelled_at"
        ).fetchall()
    assert rows == [
        ("alice", first.example_id, "bad", first.verdict),
        ("alice", second.example_id, "good", second.verdict),
    ]
    with pytest.raises(NotFound):
        reviewed.record_label(DOMAIN, LabelIn(example_id="nope", content_hash="0" * 64, label="good"))
    with pytest.raises(Conflict):
        reviewed.record_label(
            DOMAIN,
            LabelIn(example_id=first.example_id, content_hash="f" * 64, label="good", reviewer="alice"),
        )


def test_the_rows_are_built_once_per_version_of_the_partition_files(reviewed: SynthService) -> None:
    first = reviewed._review_items(DOMAIN)
    assert reviewed._review_items(DOMAIN) is first  # cached: the files did not change
    path = Path(str(reviewed.warehouse.partition_file("rejected_examples", DOMAIN)))
    data = path.read_bytes()
    path.write_bytes(data)  # rewritten (a rerun of validated_examples): built again
    os.utime(path, (time.time() + 5, time.time() + 5))
    again = reviewed._review_items(DOMAIN)
    assert again is not first and [i.example_id for i in again] == [i.example_id for i in first]


def test_the_api_refuses_what_it_cannot_take(reviewed: SynthService) -> None:
    from synth_pipelines.service.api import create_app
    from tests.conftest import served

    with served(create_app(reviewed, host="127.0.0.1", token=TOKEN)) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get(f"/v1/domains/{DOMAIN}/review").status_code == 401
            queue = client.get(f"/v1/domains/{DOMAIN}/review", params={"count": 3}, headers=auth).json()
            item = queue["items"][0]
            body = {"example_id": item["example_id"], "content_hash": item["content_hash"], "label": "good"}
            path = f"/v1/domains/{DOMAIN}/review/labels"
            assert client.post(path, json=body).status_code == 401
            missing = client.post(path, json={**body, "example_id": "nope"}, headers=auth)
            assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
            tampered = client.post(path, json={**body, "content_hash": "a" * 64}, headers=auth)
            assert tampered.status_code == 409 and tampered.json()["error"]["field"] == "content_hash"
            assert client.post(path, json={**body, "label": "maybe"}, headers=auth).status_code == 422
            assert client.get("/review/..%2Fetc").status_code in (400, 404)
            ok = client.post(path, json=body, headers=auth)
            assert ok.status_code == 200 and ok.json()["labelled"] == 1
            page = client.get(f"/review/{DOMAIN}")
            assert (
                page.status_code == 200
                and "<script>" in page.text
                and "http" not in page.text.split("<body>")[1]
            )


def _chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1200,900",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )


def _browser_available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.mark.skipif(
    not _browser_available() and not os.environ.get("SYNTH_REQUIRE_BROWSER"),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_the_review_page_labels_rows_from_the_keyboard_in_a_real_browser(reviewed: SynthService) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from synth_pipelines.service.api import create_app
    from tests.conftest import served

    with served(create_app(reviewed, host="127.0.0.1", token=TOKEN)) as url:
        browser = _chromium()
        try:
            wait = WebDriverWait(browser, 30)
            browser.get(f"{url}/review/{DOMAIN}#token={TOKEN}&reviewer=alice")
            wait.until(lambda b: b.find_element(By.ID, "progress").text.startswith("labelled 0"))
            assert "token" not in browser.current_url  # the fragment is dropped once read
            page = browser.find_element(By.TAG_NAME, "body")
            seen = []
            for key, reason in (("g", ""), ("b", "wrong method for the operation"), ("g", "")):
                row = browser.find_element(By.ID, "row").get_attribute("data-example-id")
                seen.append(row)
                if reason:
                    page.send_keys("r")
                    browser.find_element(By.ID, "reason").send_keys(reason)
                    browser.find_element(By.ID, "reason").send_keys("\ue007")  # Enter keeps it
                page.send_keys(key)
                done = len(seen)
                wait.until(
                    lambda b, n=done: b.find_element(By.ID, "progress").text.startswith(f"labelled {n} ")
                )
            page.send_keys("s")  # skip: nothing recorded
            time.sleep(0.5)
            assert browser.find_element(By.ID, "progress").text.startswith("labelled 3 ")
            assert len(set(seen)) == 3

            browser.refresh()  # labels are kept; labelled rows are not shown again
            wait.until(lambda b: b.find_element(By.ID, "progress").text.startswith("labelled 3 "))
            assert browser.find_element(By.ID, "row").get_attribute("data-example-id") not in seen

            box = browser.find_element(By.ID, "reviewer")  # a second reviewer: their own labels
            box.clear()
            box.send_keys("bob\ue007")
            browser.find_element(By.TAG_NAME, "h3").click()  # leave the box: its change event fires
            wait.until(lambda b: b.find_element(By.ID, "progress").text.startswith("labelled 0 "))
            body = browser.find_element(By.TAG_NAME, "body")
            body.send_keys("b")
            wait.until(lambda b: b.find_element(By.ID, "progress").text.startswith("labelled 1 "))
        finally:
            browser.quit()
    labels = reviewed.review_queue(DOMAIN, count=1, reviewer="alice").progress
    assert labels.labelled == 3
    from synth_pipelines.validation.review import read_labels

    recorded = read_labels(reviewed.warehouse, DOMAIN)
    assert [r["reviewer"] for r in recorded] == ["alice", "alice", "alice", "bob"]
    assert recorded[1]["reason"] == "wrong method for the operation"
    assert [r["example_id"] for r in recorded[:3]] == seen


def test_review_labels_calibrate_the_domain_and_its_runs_say_so(
    tmp_path: Path, scripted_schemas_dir: Path, scripted_backends
) -> None:
    """Label 36 rows, calibrate from them, and the domain's `auto` thresholds come from its own labels
    (the source says so); with fewer than 30 labels the profile's thresholds stay."""
    import yaml
    from typer.testing import CliRunner

    from synth_pipelines.cli import app
    from synth_pipelines.validation.calibration import MIN_REVIEW_LABELS, read_review_calibration

    root = tmp_path / "warehouse"
    service = _generated(root, scripted_schemas_dir, 48)
    # The spec leaves its gate to calibration (the plumbing settings set numbers).
    spec_file = scripted_schemas_dir / f"{DOMAIN}.yaml"
    data = yaml.safe_load(spec_file.read_text())
    for name in ("consensus_threshold", "on_topic_threshold", "field_agreement_threshold"):
        data["validation"][name] = "auto"
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    before = service.resolved_spec(DOMAIN)
    assert "review labels" not in before.threshold_sources["consensus_threshold"]

    items = service.review_queue(DOMAIN, count=500, reviewer="alice").items
    assert len(items) >= MIN_REVIEW_LABELS + 6, len(items)
    # The reviewer mostly agrees with the gate, and disagrees on a few rows.
    for n, item in enumerate(items[: MIN_REVIEW_LABELS + 6]):
        good = (item.verdict == "accepted") != (n % 9 == 0)
        label = LabelIn(
            example_id=item.example_id,
            content_hash=item.content_hash,
            label="good" if good else "bad",
            reviewer="alice",
        )
        service.record_label(DOMAIN, label)

    done = CliRunner().invoke(
        app,
        ["calibrate", "--domain", DOMAIN, "--warehouse", str(root), "--schemas", str(scripted_schemas_dir)],
    )
    assert done.exit_code == 0, done.output
    assert f"{MIN_REVIEW_LABELS + 6} review labels by alice" in done.output and "95% CI" in done.output
    stored = read_review_calibration(service.warehouse, DOMAIN)
    assert stored is not None and stored.usable and stored.labels == MIN_REVIEW_LABELS + 6
    assert stored.kappa_low <= stored.kappa <= stored.kappa_high

    after = service.resolved_spec(DOMAIN)
    source = after.threshold_sources["consensus_threshold"]
    assert source.startswith(f"auto: calibrated on {MIN_REVIEW_LABELS + 6} review labels of {DOMAIN}")
    if stored.consensus_threshold is not None:
        assert after.spec.validation.threshold == stored.consensus_threshold
    assert after.spec.validation.field_agreement_threshold == stored.field_agreement_threshold

    # Below the minimum, the profile's thresholds stay and the metadata says why.
    service.warehouse.write_json(
        f"review_labels/calibration/domain={DOMAIN}/calibration.json",
        stored.model_copy(update={"labels": MIN_REVIEW_LABELS - 1}).model_dump(mode="json"),
    )
    few = service.resolved_spec(DOMAIN)
    assert few.spec.validation == before.spec.validation
    assert few.threshold_sources["review_labels"].startswith(
        f"{MIN_REVIEW_LABELS - 1} of the {MIN_REVIEW_LABELS}"
    )


def test_calibrating_without_labels_is_a_clear_error(reviewed: SynthService) -> None:
    from synth_pipelines.service.models import ServiceError

    with pytest.raises(ServiceError, match="review label"):
        reviewed.calibrate_domain(DOMAIN)


def test_the_agreement_check_measures_kappa_from_ten_current_labels() -> None:
    from synth_pipelines.validation.review import review_agreement

    items = [_item(f"a{n}") for n in range(8)] + [
        _item(f"r{n}", verdict="rejected", stage="rules") for n in range(8)
    ]

    def label(item: ReviewItem, good: bool, who: str = "alice") -> dict:
        return {
            "reviewer": who, "example_id": item.example_id, "content_hash": item.content_hash,
            "label": "good" if good else "bad", "labelled_at": 0,
        }  # fmt: skip

    few = [label(i, True) for i in items[:9]]
    assert review_agreement(few, items, 0.2).not_measured == "9 current review labels of the 10 needed"
    agreeing = [label(i, i.verdict == "accepted") for i in items]
    good = review_agreement(agreeing, items, 0.2)
    assert good.passed and good.value == pytest.approx(1.0) and good.detail["agree"] == 16
    # The reviewer calls half the accepted rows bad: the gate's kappa falls under the spec's level.
    disagreeing = [label(i, i.verdict == "accepted" and n % 2 == 0) for n, i in enumerate(items)]
    bad = review_agreement(disagreeing, items, 0.6)
    assert not bad.passed and bad.value < 0.6 and bad.detail["gate_accepted_bad"] == 4
    # A regenerated row's label no longer counts.
    regenerated = [items[0].model_copy(update={"content_hash": content_hash('{"x": "new"}')}), *items[1:]]
    assert review_agreement(agreeing, regenerated, 0.2).detail["labels"] == 15
