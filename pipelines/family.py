"""Which model family the registry serves: the candidate network, or a baseline that beats it.

Every evaluation measures the network's policy-value lead over each baseline on the same holdout
with a paired bootstrap sd (evaluate.policy_lead: the true policy value on synthetic worlds, SNIPS
on logs). Train logs each baseline as a pyfunc model beside the network (train.log_baselines), so
any of them can be registered. A baseline is served instead of the network only when it leads by a
practical margin, both absolute and statistical (params evaluate.family):

    baseline's lead over the network > max(margin, margin_sd × bootstrap sd)

Ties and undetermined leads go to the network: it has the revenue head and the sequence encoder,
and the leave-campaign-out evaluation and the explanations are of it. `serve: network` pins the
network whatever the figures say; `serve: <baseline name>` pins that baseline (when train logged it).
The choice and its reason are in the evaluation report, the
candidate's MLflow run (tag family.served) and the registered version (tag family)."""
from __future__ import annotations

import math

from campaignops.models.pyfunc import NETWORK

POLICIES = ("best", "network")


def config(settings) -> dict:
    cfg = dict(settings.params["evaluate"].get("family") or {})
    cfg.setdefault("serve", "best")
    known = (*POLICIES, *settings.params["train"].get("baselines", []))
    if cfg["serve"] not in known:
        raise ValueError(f"params evaluate.family.serve: {cfg['serve']!r} is not one of {' | '.join(known)} "
                         "(best, network or a baseline of train.baselines)")
    for key in ("margin", "margin_sd"):
        if cfg.get(key) is None or float(cfg[key]) < 0:
            raise ValueError(f"params evaluate.family.{key}: need a number >= 0, got {cfg.get(key)!r}")
    return cfg


def choose(vs_baselines: dict, baseline_uris: dict, network_uri: str, cfg: dict) -> dict:
    """The family to serve from the network's leads over the baselines (evaluate.baseline_metrics'
    second value: {name: {metric, lead, sd, verdict}}, lead = network − baseline) and the model URIs
    train logged ({name: uri}; a baseline without one cannot be served)."""
    margin, margin_sd = float(cfg["margin"]), float(cfg["margin_sd"])
    options, metric = {}, None
    for name, v in vs_baselines.items():
        metric = v["metric"]
        ahead = -float(v["lead"])
        sd = float(v["sd"])
        needed = max(margin, margin_sd * sd) if math.isfinite(sd) else margin
        options[name] = {"lead_over_network": ahead, "sd": sd, "needed": needed,
                         "servable": name in baseline_uris,
                         "beats_network": math.isfinite(ahead) and ahead > needed}
    winners = [n for n, o in options.items() if o["beats_network"] and o["servable"]]
    rule = f"max(margin {margin:g}, {margin_sd:g} × bootstrap sd)"
    if cfg["serve"] == "network":
        served, reason = NETWORK, "network served: params evaluate.family.serve pins it"
    elif cfg["serve"] != "best":
        served = cfg["serve"]
        if served not in baseline_uris:
            raise ValueError(f"params evaluate.family.serve pins {served!r}, but the candidate's run logged no such "
                             f"model (logged: {', '.join(baseline_uris) or 'none'}); retrain with it in train.baselines")
        reason = f"{served} served: params evaluate.family.serve pins it"
    elif not winners:
        served = NETWORK
        best = max(options, key=lambda n: options[n]["lead_over_network"], default=None)
        reason = (f"network served: no baseline leads it by more than {rule}" + (
            f"; the closest, {best}, is at {options[best]['lead_over_network']:+.4f} {metric} "
            f"(needed {options[best]['needed']:.4f})" if best is not None else " (no baselines trained)"))
    else:
        served = max(winners, key=lambda n: options[n]["lead_over_network"])
        o = options[served]
        reason = (f"{served} served: its {metric} leads the network's by {o['lead_over_network']:+.4f} "
                  f"(bootstrap sd {o['sd']:.2g}), beyond {rule} = {o['needed']:.4f}")
    return {"served": served, "model_uri": network_uri if served == NETWORK else baseline_uris[served],
            "reason": reason, "metric": metric, "policy": cfg["serve"], "margin": margin, "margin_sd": margin_sd,
            "options": options}


def html_section(choice: dict) -> str:
    import html

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{o['lead_over_network']:+.4f}</td><td>{o['sd']:.2g}</td>"
        f"<td>{o['needed']:.4f}</td><td>{'yes' if o['beats_network'] else 'no'}</td>"
        f"<td>{'yes' if o['servable'] else 'no'}</td></tr>" for n, o in choice["options"].items())
    table = ("<table><tr><th>baseline</th><th>lead over network</th><th>sd</th><th>needed</th>"
             f"<th>beats network</th><th>servable</th></tr>{rows}</table>") if rows else ""
    return (f"<h2>Served family: {html.escape(choice['served'])}</h2><p>{html.escape(choice['reason'])}. "
            f"Metric: {html.escape(str(choice['metric']))}; policy <code>{html.escape(choice['policy'])}</code>. "
            "The gate's thresholds apply to the served model's holdout metrics.</p>" + table)
