"""The tiny pipeline end to end on real Ray, MLflow and Prefect: data stages, tokenize
and pretrain (lineage by content digest), then align_data -> sft -> reward -> ppo ->
quantize -> deploy (promotion gate, Ray Serve smoke test), and the DPO path (quantize then
takes dpo's model, deploy gates it against production) reusing every stage up to sft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stages.core.digests import sha256_file
from tests.conftest import DATA_DIR, TINY, last_json, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, prefect_server):
    """The tiny DAG through PPO, then the DPO path with a gate loose enough that its model is promoted: run once
    for the focused tests below, in a home of their own."""
    home = tmp_path_factory.mktemp("tiny") / "lmforge-home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LMFORGE_HOME", str(home))
        env.setenv("LMFORGE_DATA_DIR", str(DATA_DIR))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("PREFECT_API_URL", raising=False)
        args = ["run", "--config", str(TINY), "--until", "deploy", "--set",
                f"engines.prefect.port={prefect_server['port']}"]
        ppo = last_json(run_cli(args).stdout)
        dpo_args = args + ["--set", "pipeline.alignment=dpo", "--set", "deploy.gate.max_pass_rate_drop=1",
                           "--set", "deploy.gate.max_perplexity_increase=1000", "--set", "dpo.lora.r=4"]
        dpo = last_json(run_cli(dpo_args).stdout)
        # GRPO with a LoRA policy on the checkers' reward mixed with the reward model's (the PPO run's reward stage,
        # cached), up to quantize (no third server start)
        grpo = last_json(run_cli(["run", "--config", str(TINY), "--until", "quantize", "--set",
                                  f"engines.prefect.port={prefect_server['port']}", "--set", "pipeline.alignment=grpo",
                                  "--set", "grpo.lora.r=4", "--set", "grpo.rewards.model=0.5"]).stdout)
        yield {"home": home, "args": args, "dpo_args": dpo_args, "ppo": ppo, "dpo": dpo, "grpo": grpo,
               "client": MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}"), "prefect": prefect_server}


def test_the_dag_runs_in_order_and_pretrain_reads_exactly_what_tokenize_wrote(tiny, tmp_path):
    from stages.core.digests import sha256_json

    summary, client = tiny["ppo"], tiny["client"]
    assert list(summary["stages"]) == ["ingest", "dedup", "quality", "tokenize", "pretrain", "align_data", "sft",
                                       "reward", "ppo", "quantize", "deploy"]
    tok_run, pre_run = summary["stages"]["tokenize"], summary["stages"]["pretrain"]
    tok_dir = Path(client.download_artifacts(tok_run, "", dst_path=str(tmp_path / "tok")))
    client.download_artifacts(pre_run, "manifest.json", dst_path=str(tmp_path / "pre"))
    tok_manifest = json.loads((tok_dir / "manifest.json").read_text())
    pre_manifest = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    token_files = {k: v for k, v in tok_manifest["outputs"].items() if k.startswith("tokens/")}
    assert any(k.endswith(".bin") for k in token_files)
    for rel, digest in token_files.items():  # digests recomputed here
        assert sha256_file(tok_dir / rel) == digest
    assert pre_manifest["inputs"]["tokens"]["digest"] == sha256_json(sorted(token_files.items()))
    assert pre_manifest["inputs"]["tokens"]["run_id"] == tok_run
    assert pre_manifest["upstream_run_ids"] == [tok_run]
    assert tok_manifest["upstream_run_ids"] == [summary["stages"]["quality"]]
    tok = client.get_run(tok_run)
    assert tok.data.metrics["packing_efficiency"] > 0.99 and tok.data.metrics["val_unigram_entropy"] > 3
    assert [v.run_id for v in client.search_model_versions("name = 'lmforge-tiny-tokenizer'")] == [tok_run]


def test_data_stages_chain_by_run_id_and_register_the_classifier(tiny, tmp_path):
    summary, client = tiny["ppo"], tiny["client"]
    manifests = {}
    for stage in ("dedup", "quality"):
        run = client.get_run(summary["stages"][stage])
        assert run.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
        client.download_artifacts(run.info.run_id, "manifest.json", dst_path=str(tmp_path / stage))
        manifests[stage] = json.loads((tmp_path / stage / "manifest.json").read_text())
    assert manifests["dedup"]["inputs"]["docs"]["run_id"] == summary["stages"]["ingest"]
    assert manifests["quality"]["upstream_run_ids"] == [summary["stages"]["dedup"]]
    for manifest in manifests.values():
        counts = manifest["counts"]
        assert counts["in"] == counts["kept"] + counts["removed"] + counts["quarantined"]
    assert manifests["quality"]["counts"]["in"] == manifests["dedup"]["counts"]["kept"]
    dedup = client.get_run(summary["stages"]["dedup"])
    assert dedup.data.metrics["exact_removed"] + dedup.data.metrics["near_removed"] > 0
    assert {"kept.jsonl", "removed.jsonl", "dedup_clusters.png"} <= {a.path for a in client.list_artifacts(dedup.info.run_id)}

    quality = client.get_run(summary["stages"]["quality"])
    assert quality.data.metrics["classifier.auc"] > 0.7
    assert quality.data.metrics["funnel.min_words.removed"] > 0 and quality.data.metrics["pii.emails"] > 0
    assert {"quality_classifier.bin", "quality.png", "kept.jsonl"} <= {a.path for a in client.list_artifacts(quality.info.run_id)}
    versions = client.search_model_versions("name = 'lmforge-tiny-quality'")
    assert [v.run_id for v in versions] == [quality.info.run_id]

    # standalone quality picks up the registered classifier from the same store
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "d1", "text": "A line of text that is far too short."}) + "\n")
    out = tmp_path / "standalone"
    run_cli(["stage", "quality", "--input", str(docs), "--output", str(out), "--config", str(TINY)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["details"]["classifier"] == "registered: lmforge-tiny-quality@latest"
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert removed[0]["quality_score"] is not None and removed[0]["lang"] == "en"


def test_pretrain_logs_its_curves_and_registers_the_model(tiny):
    summary, client = tiny["ppo"], tiny["client"]
    pre_run = summary["stages"]["pretrain"]
    pre = client.get_run(pre_run)
    assert pre.data.tags["mlflow.parentRunId"] == summary["pipeline_run_id"]
    history = client.get_metric_history(pre_run, "loss")
    assert [m.step for m in history][:2] == [1, 5] and history[-1].step == 30  # rank 0's step metrics
    assert {"val_loss", "perplexity", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(pre.data.metrics)
    assert pre.data.metrics["final_val_loss"] < pre.data.metrics["first_val_loss"]
    assert {"loss_curve.png", "train_log.jsonl", "model"} <= {a.path for a in client.list_artifacts(pre_run)}
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "latest-pretrain").run_id == pre_run


def test_alignment_trains_evaluates_and_registers_each_model(tiny, tmp_path):
    _check_alignment(tiny["client"], tiny["ppo"], tmp_path)


def test_quantize_measures_every_variant_and_the_chosen_one_loads(tiny, tmp_path):
    _check_quantize(tiny["client"], tiny["ppo"]["stages"], tmp_path)


def test_the_first_deployment_is_promoted_and_smoke_tested(tiny):
    client, runs = tiny["client"], tiny["ppo"]["stages"]
    deploy = client.get_run(runs["deploy"])
    assert deploy.data.tags["lmforge.promoted"] == "true" and deploy.data.tags["lmforge.gate"] == "no production model yet"
    assert deploy.data.tags["lmforge.endpoint"].startswith("http://127.0.0.1:")
    assert {"smoke_chat_latency_s", "smoke_stream_s", "candidate.pass_rate"} <= set(deploy.data.metrics)
    assert deploy.data.metrics["errors"] == 0


def test_the_dpo_path_reuses_everything_up_to_sft(tiny, tmp_path):
    summary, dpo, client = tiny["ppo"], tiny["dpo"], tiny["client"]
    assert list(dpo["stages"]) == ["ingest", "dedup", "quality", "tokenize", "pretrain", "align_data", "sft", "dpo",
                                   "quantize", "deploy"]
    assert dpo["cache_hits"] == ["ingest", "dedup", "quality", "tokenize", "pretrain", "align_data", "sft"]
    assert dpo["stages"]["sft"] == summary["stages"]["sft"]
    run = client.get_run(dpo["stages"]["dpo"])
    assert run.data.tags["mlflow.parentRunId"] == dpo["pipeline_run_id"]
    assert {"heldout_pair_accuracy", "sft.pass_rate", "dpo.pass_rate", "dpo.kl_to_sft", "dpo.sampled_pass_rate",
            "dpo_minus_sft.pass_rate.ci_low", "dpo_minus_sft.sampled_pass_rate.ci_low",
            "chosen_nll"} <= set(run.data.metrics)  # tiny sets rpo_alpha
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][-1] == 6
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "latest-dpo").run_id == run.info.run_id
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json", str(tmp_path / "dpo"))).read_text())
    assert manifest["inputs"]["model"]["run_id"] == summary["stages"]["sft"]
    quantized = json.loads(Path(client.download_artifacts(dpo["stages"]["quantize"], "manifest.json",
                                                          str(tmp_path / "q-dpo"))).read_text())
    assert quantized["inputs"]["model"]["run_id"] == dpo["stages"]["dpo"]  # the alignment path that ran


def test_the_dpo_path_trains_a_lora_adapter_and_registers_the_merged_model(tiny, tmp_path):
    client, dpo = tiny["client"], tiny["dpo"]
    run = client.get_run(dpo["stages"]["dpo"])
    metrics = run.data.metrics
    assert 0 < metrics["trainable_parameters"] < 0.2 * metrics["parameters"]  # r=4 adapters only
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts
    model = Path(client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dpo")))
    assert not (model / "adapter_config.json").exists() and (model / "model.safetensors").is_file()  # merged


def test_the_grpo_path_trains_a_lora_policy_on_verifiable_rewards(tiny, tmp_path):
    client, grpo, ppo = tiny["client"], tiny["grpo"], tiny["ppo"]
    assert list(grpo["stages"])[-4:] == ["sft", "reward", "grpo", "quantize"]
    assert grpo["stages"]["sft"] == ppo["stages"]["sft"] and {"sft", "reward"} <= set(grpo["cache_hits"])
    grpo_manifest = json.loads(Path(client.download_artifacts(grpo["stages"]["grpo"], "manifest.json",
                                                              str(tmp_path / "g"))).read_text())
    assert grpo_manifest["inputs"]["reward_model"]["run_id"] == ppo["stages"]["reward"]  # the mix's reward model
    run = client.get_run(grpo["stages"]["grpo"])
    assert {"grpo.pass_rate", "sft.pass_rate", "grpo.kl_to_sft", "grpo_minus_sft.pass_rate.ci_low",
            "grpo.sampled_pass_rate"} <= set(run.data.metrics)
    for name in ("reward", "reward_std", "kl", "entropy", "policy_loss", "response_length", "clip_ratio",
                 "model_score"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3], name
    assert {"adapter/adapter_config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert 0 < run.data.metrics["trainable_parameters"] < 0.2 * run.data.metrics["parameters"]
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "latest-grpo").run_id == run.info.run_id
    manifest = json.loads(Path(client.download_artifacts(grpo["stages"]["quantize"], "manifest.json",
                                                         str(tmp_path / "q"))).read_text())
    assert manifest["inputs"]["model"]["run_id"] == grpo["stages"]["grpo"]  # quantize took the GRPO policy


def test_the_gate_promotes_within_its_bounds_and_refuses_outside_them(tiny):
    """Both decisions, each forced: the DPO run's loose gate promotes its model over the PPO one; then the PPO
    model, rerun through deploy against a production whose perplexity is recorded as 1.0 (no model does better)
    with no increase allowed, is refused and production stays."""
    client, ppo, dpo = tiny["client"], tiny["ppo"], tiny["dpo"]
    gate = client.get_run(dpo["stages"]["deploy"]).data.tags
    production = client.get_model_version_by_alias("lmforge-tiny-lm", "production")
    first = client.get_run(ppo["stages"]["deploy"]).data.tags["lmforge.served_version"]
    assert gate["lmforge.promoted"] == "true" and production.run_id == dpo["stages"]["quantize"]
    assert gate["lmforge.gate"] == f"within the gates of production v{first}"
    assert production.tags["lmforge.previous_production"] == first  # what rollback returns to

    variant = client.get_run(production.run_id).data.tags["lmforge.quantized_variant"]
    recorded = client.get_run(production.run_id).data.metrics[f"{variant}.perplexity"]
    client.log_metric(production.run_id, f"{variant}.perplexity", 1.0, step=1)
    try:
        rerun = last_json(run_cli(["rerun", "deploy", "--from", ppo["pipeline_run_id"], "--only",
                                   "--set", "deploy.gate.max_perplexity_increase=0"]).stdout)
    finally:
        client.log_metric(production.run_id, f"{variant}.perplexity", recorded, step=2)
    refused = client.get_run(rerun["stages"]["deploy"]).data.tags
    assert refused["lmforge.promoted"] == "false" and "> production's 1.00 x 1.00" in refused["lmforge.gate"]
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "production").version == production.version


def test_serve_generate_and_keep_running_serve_production(tiny):
    production = tiny["client"].get_model_version_by_alias("lmforge-tiny-lm", "production")
    _check_serve_and_generate(str(production.version))
    _check_keep_running(tiny["dpo_args"], tiny["client"], str(production.version))


def test_the_dashboard_shows_every_panel_of_both_runs(tiny, chromium, tmp_path):
    _check_dashboard(tiny["ppo"], tiny["dpo"], tmp_path, chromium, tiny["prefect"]["port"])


def test_the_prefect_ui_shows_every_stage(tiny, chromium, tmp_path):
    _check_prefect_ui(tiny["ppo"], tiny["prefect"], tmp_path, chromium)


def _check_prefect_ui(run: dict, prefect_server: dict, tmp_path: Path, chromium: str) -> None:
    """The Prefect UI's flow-run page, loaded in headless Chromium, shows every stage's task run."""
    from tests.conftest import browse

    url = f"{prefect_server['url']}/runs/flow-run/{run['prefect_flow_run_id']}"
    dom, errors = browse(chromium, url, tmp_path / "profile-prefect", screenshot="prefect-flow-run.png")
    assert not errors, errors
    missing = [stage for stage in run["stages"] if stage not in dom]
    assert not missing, f"the flow-run page does not show {missing}"
    # the graph that page draws comes from each task run's recorded inputs: the DAG's edges, not a hairball
    from pipelines.dag import upstream_in_run
    from tests.conftest import prefect_edges

    drawn = prefect_edges(prefect_server["api"], run["prefect_flow_run_id"])
    stages = list(run["stages"])
    assert drawn == {name: sorted(upstream_in_run(name, stages)) for name in stages}
    assert drawn["quantize"] == ["align_data", "ppo", "tokenize"] and drawn["sft"] == ["align_data", "pretrain"]


def _check_dashboard(ppo_run: dict, dpo_run: dict, tmp_path: Path, chromium: str, prefect_port: int) -> None:
    """`lmforge dashboard --out`: opens on the newest run of the whole DAG even after a partial run; every stage
    in the DAG, every chart drawn with data (timeline, reasons, pass-rate labels, the chosen quantization variant
    and the GGUF point, serving throughput and errors), the gate's decision, no script errors, in headless
    Chromium (a screenshot goes to test-artifacts/)."""
    import re

    from tests.conftest import browse

    partial = last_json(run_cli(["run", "--config", str(TINY), "--until", "ingest", "--set",
                                 f"engines.prefect.port={prefect_port}"]).stdout)  # the newest run is partial
    page = tmp_path / "dashboard.html"
    default = last_json(run_cli(["dashboard", "--out", str(page)]).stdout)
    assert default["runs"][0] != partial["pipeline_run_id"] and partial["pipeline_run_id"] in default["runs"]
    written = last_json(run_cli(["dashboard", "--run", ppo_run["pipeline_run_id"], "--out", str(page)]).stdout)
    assert written["runs"][0] == ppo_run["pipeline_run_id"] and dpo_run["pipeline_run_id"] in written["runs"]
    url = f"{page.as_uri()}?run={ppo_run['pipeline_run_id']}&compare={dpo_run['pipeline_run_id']}"
    dom, errors = browse(chromium, url, tmp_path / "profile", screenshot="dashboard.png")
    assert not errors, errors
    for stage in ppo_run["stages"]:
        assert f'data-stage="{stage}"' in dom
    charts = dict(re.findall(r'id="chart-([a-z0-9-]+)"[^>]*data-points="(\d+)"', dom))
    curves = [f"curve-{i}" for i in range(5)]  # one card per curve chart the stages declare
    assert set(charts) == {"timeline", "funnel", "reasons", *curves, "passrate", "quantization", "lmeval", "serving"}
    for title in ("Pretraining: training and validation loss", "SFT / DPO: loss on responses",
                  "Reward model: pairwise accuracy", "PPO: reward, KL to SFT, rollout pass rate",
                  "GRPO: reward, its spread within groups, KL"):
        assert f"<h3>{title}</h3>" in dom
    # every chart drawn with data, but GRPO's: neither run compared here took that path
    assert charts.pop("curve-4") == "0" and all(int(points) > 0 for points in charts.values()), charts
    assert re.search(r'id="panel-gate"[^>]*data-filled="1"', dom) and "promoted" in dom
    assert "(chosen)" in dom and "gguf-q8_0" in dom  # the registered variant marked, the GGUF file plotted
    assert "tokens/s with" in dom and "error(s) in" in dom  # serving throughput and errors
    assert "held-out bits per byte: fp32 " in dom  # lm-eval's perplexity task beside its checker tasks
    assert "quarantined: " in dom or "removed: " in dom  # why documents left
    assert re.search(r'<div id="errors">\s*</div>', dom)
    partial_url = f"{page.as_uri()}?run={partial['pipeline_run_id']}"
    last_json(run_cli(["dashboard", "--run", partial["pipeline_run_id"], "--out", str(page)]).stdout)
    dom, errors = browse(chromium, partial_url, tmp_path / "profile-partial")
    assert not errors and "not in this run" in dom and "is not part of this run" in dom


def _check_keep_running(args: list[str], client: MlflowClient, version: str) -> None:
    """deploy.keep_running: `lmforge run` prints its summary, then stays in the foreground serving production
    until SIGTERM, and exits 0 with the app gone."""
    import signal
    import subprocess

    import httpx

    from tests.conftest import LMFORGE, REPO, free_port

    port = free_port()
    proc = subprocess.Popen([LMFORGE, *args, "--set", "deploy.keep_running=true", "--set", f"deploy.server.port={port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        summary = {}
        for line in proc.stdout:
            if line.startswith("{") and '"stages"' in line:
                summary = json.loads(line)
                break
        assert "deploy" not in summary["cache_hits"]  # keep_running is the deploy stage's config: it ran
        tags = client.get_run(summary["stages"]["deploy"]).data.tags
        assert tags["lmforge.endpoint"] == f"http://127.0.0.1:{port}"
        assert proc.poll() is None  # still in the foreground after the summary
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["lmforge-tiny-lm"]
        assert tags["lmforge.served_version"] == version
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def _check_serve_and_generate(version: str) -> None:
    """`lmforge generate` answers from the production alias; `lmforge serve` serves it under its registered
    name (another name is a 404) and stops on SIGTERM."""
    import signal
    import subprocess

    from openai import NotFoundError, OpenAI

    from tests.conftest import LMFORGE, REPO, free_port

    out = run_cli(["generate", "--model", "models:/lmforge-tiny-lm@production", "--prompt", "Hello", "--max-tokens", "4"])
    assert json.loads(out.stderr.strip().splitlines()[-1])["version"] == version
    port = free_port()
    proc = subprocess.Popen([LMFORGE, "serve", "--model", "models:/lmforge-tiny-lm@production", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        started = {}
        for line in proc.stdout:  # Ray may forward worker lines to stdout before the JSON line
            if line.startswith("{") and '"url"' in line:
                started = json.loads(line)
                break
        assert started["version"] == version and started["url"] == f"http://127.0.0.1:{port}/v1"
        oa = OpenAI(base_url=started["url"], api_key="none", max_retries=0, timeout=60)
        assert [m.id for m in oa.models.list().data] == ["lmforge-tiny-lm"]
        assert oa.completions.create(model="lmforge-tiny-lm", prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        with pytest.raises(NotFoundError):
            oa.completions.create(model="another-model", prompt="Hi", max_tokens=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _check_alignment(client: MlflowClient, summary: dict, tmp_path: Path) -> None:
    runs = summary["stages"]
    align = client.get_run(runs["align_data"])
    assert align.data.metrics["count.sft_train"] > 300 and align.data.metrics["count.pref_heldout"] > 10
    assert 0 <= align.data.metrics["contamination_rate"] < 0.5
    assert "majority_baseline.language" in align.data.metrics

    sft = client.get_run(runs["sft"])
    assert sft.data.metrics["heldout_loss"] < sft.data.metrics["heldout_loss_start"]
    assert {"base.pass_rate", "sft.pass_rate", "sft_minus_base.ci_low"} <= set(sft.data.metrics)
    assert "samples_table.json" in {a.path for a in client.list_artifacts(sft.info.run_id)}
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "latest-sft").run_id == sft.info.run_id

    reward = client.get_run(runs["reward"])
    # the held-out pairwise accuracy is what the registered reward model does on align_data's held-out pairs
    from stages.alignment.data import read_rows
    from stages.alignment.scoring import load_reward_model, score_texts

    pairs = read_rows(Path(client.download_artifacts(runs["align_data"], "pref_heldout.jsonl", str(tmp_path / "ad"))))
    rm, tok = load_reward_model(Path(client.download_artifacts(runs["reward"], "model", str(tmp_path / "rm"))), 1)
    prompts = [p["prompt_text"] for p in pairs]
    right = score_texts(rm, tok, prompts, [p["response_text"] for p in pairs]) > \
        score_texts(rm, tok, prompts, [p["rejected_text"] for p in pairs])
    # (one near-tie may order differently with another thread count)
    assert abs(reward.data.metrics["pairwise_accuracy"] - float(right.mean())) <= 1 / len(pairs) + 1e-9
    assert {"heldout_accuracy", "spearman_reward_vs_checker", "chosen_nll", "bt_loss"} <= set(reward.data.metrics)
    # every family with its interval; the 0.8 goal over the families the 1.9M model can judge, a figure not a gate
    m = reward.data.metrics
    for family in ("count_words", "language", "question_type", "sentiment"):
        assert m[f"pairwise_accuracy.{family}.ci_low"] <= m[f"pairwise_accuracy.{family}"] <= \
            m[f"pairwise_accuracy.{family}.ci_high"]
    judged = [p["family"] in ("language", "question_type") for p in pairs]
    assert m["goal.met"] == float(m["goal.pairwise_accuracy"] >= 0.8) and sum(judged) > 0
    assert m["goal.families"] == 2 and m["goal.families_met"] == sum(
        m[f"pairwise_accuracy.{f}"] >= 0.8 for f in ("language", "question_type"))
    assert client.get_model_version_by_alias("lmforge-tiny-reward", "latest-reward").run_id == reward.info.run_id

    ppo = client.get_run(runs["ppo"])
    names = {"reward", "kl", "entropy", "policy_loss", "critic_loss", "ppo_clip_ratio", "ppo_kl", "response_length",
             "return", "time_generation_s", "time_scoring_s", "time_training_s", "anchor_kl"}
    assert names <= set(ppo.data.metrics)
    assert [m.step for m in client.get_metric_history(ppo.info.run_id, "reward")] == [1, 2, 3]
    assert {"sft.pass_rate", "ppo.pass_rate", "sft.mean_reward", "ppo.mean_reward", "ppo.kl_to_sft",
            "ppo_minus_sft.reward.ci_low", "sft.sampled_pass_rate", "ppo.sampled_pass_rate",
            "ppo_minus_sft.sampled_pass_rate.ci_low", "ppo.sampled_mean_reward"} <= set(ppo.data.metrics)
    assert abs(ppo.data.metrics["sft.kl_to_sft"]) < 1e-3  # before any update the policy is the reference
    assert ppo.data.metrics["count.rollout_answers"] == 3 * 4 * 2  # steps x prompts x answers per prompt
    assert client.get_model_version_by_alias("lmforge-tiny-lm", "latest-ppo").run_id == ppo.info.run_id
    manifest = json.loads(Path(client.download_artifacts(runs["ppo"], "manifest.json", str(tmp_path / "ppo"))).read_text())
    assert manifest["inputs"]["model"]["run_id"] == runs["sft"]
    assert manifest["inputs"]["reward_model"]["run_id"] == runs["reward"]


def _check_quantize(client: MlflowClient, runs: dict, tmp_path: Path) -> None:
    from stages.quantize.storage import is_variant

    run = client.get_run(runs["quantize"])
    metrics = run.data.metrics
    # linear weights quantized, the (tied) embedding kept in fp32: at this size it is most of the model
    assert metrics["int8.size_ratio"] <= 0.8 and metrics["int4.size_ratio"] <= 0.8
    assert metrics["gguf-q8_0.size_ratio"] < 0.6 and abs(metrics["gguf-q8_0.perplexity_delta"]) < 0.05  # the file, evaluated
    for variant in ("fp32", "int8", "int4"):
        assert {f"{variant}.perplexity", f"{variant}.pass_rate", f"{variant}.latency_ms_per_token_b1",
                f"{variant}.latency_ms_per_token_b8"} <= set(metrics)
    assert abs(metrics["int8.perplexity_delta"]) < 0.05
    for variant in ("fp32", "int8", "int4"):  # lm-evaluation-harness on every torch variant
        assert metrics[f"{variant}.lm_eval.heldout_ppl.bits_per_byte"] > 0
        assert {f"{variant}.lm_eval.{family}.pass" for family in ("language", "question_type")} <= set(metrics)
    assert {"tradeoff.png", "variants.json", "model-q8_0.gguf", "int8", "int4"} <= \
        {a.path for a in client.list_artifacts(run.info.run_id)}
    chosen = run.data.tags["lmforge.quantized_variant"]
    assert run.data.tags["lmforge.choice"].startswith(f"{chosen}:")  # the run says why that variant won
    for batch in (1, 8):  # quantize.choose.max_latency_ratio 1.0: never slower than the unquantized model
        key = f"latency_ms_per_token_b{batch}"
        assert metrics[f"{chosen}.{key}"] <= metrics[f"fp32.{key}"]
    # the version this run registered (the DPO run moved latest-quantized on since)
    version, = [v for v in client.search_model_versions("name = 'lmforge-tiny-lm'") if v.run_id == run.info.run_id]
    assert version.source.rstrip("/").endswith(chosen)
    manifest = json.loads(Path(client.download_artifacts(runs["quantize"], "manifest.json", str(tmp_path / "q"))).read_text())
    assert manifest["inputs"]["model"]["run_id"] == runs["ppo"]
    import torch
    from transformers import AutoModelForCausalLM

    for variant in sorted({chosen, "int8", "int4"}):  # the registered variant and the quantized ones load and generate
        folder = Path(client.download_artifacts(runs["quantize"], variant, str(tmp_path / variant)))
        assert is_variant(folder) == (variant != "fp32")  # what vLLM loads with quantization=torchao
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False).shape == (1, 7)

