"""Alert delivery: Alertmanager, chat webhooks, e-mail (docs/delivery.md).

    alerts topic --(faust agent `route`, consumer group <group_id>-app)--> router
        -> per receiver: a job appended to the delivery log (topic, awaited)
        -> only then is the alert acknowledged (its offset may be committed)
    per receiver: a queue of pending jobs, one sender task, exponential backoff
        -> delivered: a `done` mark appended to the delivery log

The delivery log (`delivery.topic`, compacted, keyed by receiver and alert_id,
partitioned like the alerts topic) is the durable state: a worker that takes
over an alerts partition replays its delivery-log partition, re-queues what is
pending and skips what is done. So a job survives a kill -9, and an alert the
agent sees again (a replay) is neither queued nor sent twice.

Modules: `text` (the human message), one module per receiver kind
(`alertmanager`, `generic`, `slack`, `dingtalk`, `wecom`, `feishu`, `email`,
`log`) with pure formatting functions, `router`, `journal` (the delivery log),
`queue` (a receiver's queue and retries), `agents` (the faust wiring).
"""
