"""A gRPC client that knows nothing of Sluice's proto: it learns the services by server
reflection, builds CreateRoom's messages from the descriptors it was sent, calls it with the
service token and without, and asks the standard health service. Prints what it saw as JSON.
Usage: python reflection_client.py HOST:PORT SERVICE_TOKEN ROOM
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

addr, token, room = sys.argv[1:]
channel = grpc.insecure_channel(addr)
db = ProtoReflectionDescriptorDatabase(channel)
services = sorted(db.get_services())
pool = descriptor_pool.DescriptorPool(db)
method = pool.FindServiceByName("sluice.v1.ChatService").FindMethodByName("CreateRoom")
request_type = message_factory.GetMessageClass(method.input_type)
response_type = message_factory.GetMessageClass(method.output_type)
create_room = channel.unary_unary(
    "/sluice.v1.ChatService/CreateRoom",
    request_serializer=request_type.SerializeToString,
    response_deserializer=response_type.FromString,
)
reply = create_room(request_type(room=room, members=["alice", "bob"]), metadata=[("authorization", f"Bearer {token}")], timeout=10)
try:
    create_room(request_type(room=room + "-x", members=["alice", "bob"]), timeout=10)
    without_token = "OK"
except grpc.RpcError as e:
    without_token = e.code().name
health = health_pb2_grpc.HealthStub(channel)
status = {
    name or "(server)": health_pb2.HealthCheckResponse.ServingStatus.Name(health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status)
    for name in ("", "sluice.v1.ChatService")
}
print(json.dumps({"services": services, "room": reply.room, "members": sorted(reply.members), "without_token": without_token, "health": status}))
