// This package's layer against a scripted in-process grpc-js server (the conformance suite in tests/conformance
// runs it against `rillet serve`).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Metadata, Server, ServerCredentials, type ServerDuplexStream, type ServerWritableStream, status }
  from "@grpc/grpc-js";

import {
  ErrorInfo, Finished, FinishReason, type GenerateRequest, type GenerateResponse, InferenceServiceService, RetryInfo,
  RilletClient, RilletError, type SessionRequest, type SessionResponse, Status, WEIGHTED_ROUND_ROBIN, serviceConfig,
} from "../src";
import { Any } from "../src/gen/google/protobuf/any";

const cancels: string[] = [];

function finished(reason: FinishReason): { $case: "finished"; value: Finished } {
  return { $case: "finished", value: Finished.fromPartial({ reason }) };
}

function queueFull(): Status {
  return Status.fromPartial({
    code: status.RESOURCE_EXHAUSTED, message: "queue full",
    details: [
      Any.fromPartial({ typeUrl: "type.googleapis.com/google.rpc.ErrorInfo",
        value: Buffer.from(ErrorInfo.encode({ reason: "QUEUE_FULL", domain: "rillet.dev", metadata: { limit: "64" } }).finish()) }),
      Any.fromPartial({ typeUrl: "type.googleapis.com/google.rpc.RetryInfo",
        value: Buffer.from(RetryInfo.encode({ retryDelay: { seconds: 1n, nanos: 500_000_000 } }).finish()) }),
    ],
  });
}

const service = {
  generate(call: ServerWritableStream<GenerateRequest, GenerateResponse>): void {
    if (call.request.params?.prompt?.$case === "text" && call.request.params.prompt.value === "busy") {
      const trailer = new Metadata();
      trailer.set("grpc-status-details-bin", Buffer.from(Status.encode(queueFull()).finish()));
      call.emit("error", { code: status.RESOURCE_EXHAUSTED, details: "queue full", metadata: trailer });
      return;
    }
    call.write({ seq: 0n, kind: { $case: "tokenDelta", value: { text: "a ", tokenIds: [1], logprobs: [] } } });
    call.write({ seq: 1n, kind: finished(FinishReason.FINISH_REASON_LENGTH) });
    call.end();
  },
  session(call: ServerDuplexStream<SessionRequest, SessionResponse>): void {
    call.on("data", (msg: SessionRequest) => {
      const id = msg.requestId;
      if (msg.kind?.$case === "startGenerate") {
        const prompt = msg.kind.value.params?.prompt;
        const text = prompt?.$case === "text" ? prompt.value : "";
        if (text === "bad") {
          call.write({ requestId: id, seq: 0n, kind: { $case: "error", value: queueFull() } });
        } else {
          call.write({ requestId: id, seq: 0n, kind: { $case: "tokenDelta", value: { text: "x ", tokenIds: [7], logprobs: [] } } });
          if (text !== "hang") {
            call.write({ requestId: id, seq: 1n, kind: finished(FinishReason.FINISH_REASON_LENGTH) });
          }
        }
      } else if (msg.kind?.$case === "cancel") {
        cancels.push(id);
        call.write({ requestId: id, seq: 1n, kind: finished(FinishReason.FINISH_REASON_CANCELLED) });
      }
    });
    call.on("end", () => call.end());
  },
  synthesize(): void {},
  listModels(): void {},
};

let server: Server;
let client: RilletClient;

before(async () => {
  server = new Server();
  server.addService(InferenceServiceService, service);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  client = new RilletClient(`127.0.0.1:${port}`);
});

after(() => {
  client.close();
  server.forceShutdown();
});

test("generate yields deltas, then finished", async () => {
  const kinds: string[] = [];
  for await (const msg of client.generate({ prompt: { $case: "text", value: "hi" } })) kinds.push(msg.kind!.$case);
  assert.deepEqual(kinds, ["tokenDelta", "finished"]);
});

test("a call's error carries ErrorInfo and RetryInfo decoded from grpc-status-details-bin", async () => {
  await assert.rejects(
    async () => { for await (const _ of client.generate({ prompt: { $case: "text", value: "busy" } })) { /* none */ } },
    (error: unknown) => {
      assert.ok(error instanceof RilletError);
      assert.equal(error.codeName, "RESOURCE_EXHAUSTED");
      assert.equal(error.reason, "QUEUE_FULL");
      assert.equal(error.domain, "rillet.dev");
      assert.deepEqual(error.metadata, { limit: "64" });
      assert.equal(error.retryDelayMs, 1500);
      assert.ok(error.retryable);
      return true;
    },
  );
});

test("an in-band error fails its request alone", async () => {
  const session = client.session();
  const good = session.generate({ params: { prompt: { $case: "text", value: "ok" } } });
  const bad = session.generate({ params: { prompt: { $case: "text", value: "bad" } } });
  await assert.rejects(async () => { for await (const _ of bad) { /* none */ } },
    (e: unknown) => e instanceof RilletError && e.reason === "QUEUE_FULL" && e.requestId === bad.id);
  const seen: string[] = [];
  for await (const msg of good) seen.push(msg.kind!.$case);
  assert.deepEqual(seen, ["tokenDelta", "finished"]);
  session.end();
  await session.wait();
});

test("aborting a request's signal sends Cancel", async () => {
  const session = client.session();
  const abort = new AbortController();
  const request = session.generate({ params: { prompt: { $case: "text", value: "hang" } } }, { id: "long", signal: abort.signal });
  const reasons: FinishReason[] = [];
  for await (const msg of request) {
    if (msg.kind?.$case === "tokenDelta") abort.abort();
    if (msg.kind?.$case === "finished") reasons.push(msg.kind.value.reason);
  }
  assert.deepEqual(cancels, ["long"]);
  assert.deepEqual(reasons, [FinishReason.FINISH_REASON_CANCELLED]);
  session.close();
});

test("balanced clients use weighted_round_robin with grpc-js's snake_case keys, out of band", () => {
  const weighted = JSON.parse(serviceConfig(true));
  assert.deepEqual(weighted.loadBalancingConfig, [{ weighted_round_robin: WEIGHTED_ROUND_ROBIN }]);
  assert.equal(WEIGHTED_ROUND_ROBIN.enable_oob_load_report, true);
  assert.deepEqual(JSON.parse(serviceConfig(false)).loadBalancingConfig, [{ round_robin: {} }]);
  const retried = weighted.methodConfig[0].name.map((n: { method: string }) => n.method);
  assert.ok(!retried.includes("Session") && !retried.includes("Abort"));
  new RilletClient("ipv4:127.0.0.1:1,127.0.0.2:1", { balancing: "weighted" }).close(); // grpc-js accepts the config
});
