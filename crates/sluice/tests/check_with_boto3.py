"""Reads what Sluice wrote with AWS's own SDK for Python (boto3), not with our code, and
checks it sits where DESIGN.md's data model says. Prints one JSON line of what it saw.

Environment: SLUICE_RESOURCE_PREFIX, CHECK_SENDER, CHECK_RECIPIENT, CHECK_CAMPAIGN,
CHECK_RECIPIENTS (how many), and the AWS_* endpoint variables of the test run.
"""

import json
import time
import os

import boto3

prefix = os.environ["SLUICE_RESOURCE_PREFIX"]
sender, recipient = os.environ["CHECK_SENDER"], os.environ["CHECK_RECIPIENT"]
campaign, expected = os.environ["CHECK_CAMPAIGN"], int(os.environ["CHECK_RECIPIENTS"])
room = "dm:" + ":".join(sorted([sender, recipient]))

region = os.environ["AWS_REGION"]
ddb = boto3.client("dynamodb", region_name=region, endpoint_url=os.environ["AWS_ENDPOINT_URL_DYNAMODB"])
sqs = boto3.client("sqs", region_name=region, endpoint_url=os.environ["AWS_ENDPOINT_URL_SQS"])

# messages: PK room, SK seq.
msgs = ddb.query(
    TableName=f"{prefix}-messages",
    KeyConditionExpression="#r = :r",
    ExpressionAttributeNames={"#r": "room"},
    ExpressionAttributeValues={":r": {"S": room}},
    ConsistentRead=True,
)["Items"]
assert len(msgs) == 1, msgs
m = msgs[0]
assert m["seq"] == {"N": "1"} and m["sender"]["S"] == sender and m["kind"]["S"] == "one_off", m
assert m["campaign_id"]["S"] == campaign, m

# rooms: PK room. A direct room has no item: its members are the two its id names, its last
# seq is its newest message's (the one above).
r = ddb.get_item(TableName=f"{prefix}-rooms", Key={"room": {"S": room}}, ConsistentRead=True)
assert "Item" not in r, r

# inbox: PK user, SK room; the total beside it at SK "#total".
row = ddb.get_item(TableName=f"{prefix}-inbox", Key={"user": {"S": recipient}, "room": {"S": room}}, ConsistentRead=True)["Item"]
assert row["unread"] == {"N": "1"} and row["read_seq"] == {"N": "0"}, row
total = ddb.get_item(TableName=f"{prefix}-inbox", Key={"user": {"S": recipient}, "room": {"S": "#total"}}, ConsistentRead=True)["Item"]
assert total["total_unread"] == {"N": "1"}, total

# campaigns: PK campaign_id; counters summed over the shards.
parts = ddb.query(
    TableName=f"{prefix}-campaigns",
    KeyConditionExpression="campaign_id = :c",
    ExpressionAttributeValues={":c": {"S": campaign}},
    ConsistentRead=True,
)["Items"]
persisted = sum(int(p.get("persisted", {"N": "0"})["N"]) for p in parts)
enqueued = sum(int(p.get("enqueued", {"N": "0"})["N"]) for p in parts)
assert persisted == expected and enqueued == expected, (persisted, enqueued)

# The queue drained and nothing went to the dead-letter queue. A campaign is done once every
# message is persisted and counted; a message a killed worker persisted but never acknowledged
# leaves the queue only when its visibility times out and a worker sees the duplicate, so wait.
deadline = time.monotonic() + 180
while True:
    depth = {}
    for name in (f"{prefix}-bulk.fifo", f"{prefix}-bulk-dlq.fifo"):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["FifoQueue"] == "true" and attrs.get("ContentBasedDeduplication") == "false", attrs
        depth[name] = int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
    if all(d == 0 for d in depth.values()) or time.monotonic() > deadline:
        break
    time.sleep(1)
assert all(d == 0 for d in depth.values()), depth

print(json.dumps({"room": room, "unread": row["unread"]["N"], "persisted": persisted, "queues": depth}))
