import Foundation
import ServeProto
import SwiftProtobuf
import Testing

/// Fixed-point scale of `PBResourceSet.quantitiesE4`: value = amount × 10_000.
private let resourceScale: Int64 = 10_000

/// Converts a decimal amount to the fixed-point value stored in a resource set.
private func fixedPoint(_ amount: Double) -> Int64 {
    Int64((amount * Double(resourceScale)).rounded())
}

// MARK: - Fixtures (every field set)

private func resources(cpu: Double, gpu: Double, memoryBytes: Int64) -> PBResourceSet {
    var set = PBResourceSet()
    set.quantitiesE4 = [
        "CPU": fixedPoint(cpu),
        "GPU": fixedPoint(gpu),
        "memory": memoryBytes * resourceScale,
        "accelerator_type:A100": fixedPoint(0.001),
        "custom_widget": fixedPoint(3),
    ]
    return set
}

private func grant() -> PBResourceGrant {
    var grant = PBResourceGrant()
    grant.resources = resources(cpu: 2, gpu: 0.5, memoryBytes: 1 << 30)
    grant.gpuIds = ["1"]
    grant.ompNumThreads = 2
    return grant
}

private func registerNode() -> PBRegisterNode {
    var running = PBRunningReplica()
    running.replicaID = "app#llm#abc123"
    running.appName = "app"
    running.deploymentName = "llm"
    running.specVersion = "v7-3f2a"
    running.state = .running
    running.grant = grant()

    var reg = PBRegisterNode()
    reg.nodeID = "node-5d1e"
    reg.protocolVersion = 1
    reg.address = "10.0.0.12"
    reg.port = 52_365
    reg.totalResources = resources(cpu: 16, gpu: 8, memoryBytes: 128 << 30)
    reg.labels = ["zone": "eu-west-1a", "rack": "r7"]
    reg.nodeType = "gpu-a100-x8"
    reg.acceleratorType = "A100"
    reg.numGpus = 8
    reg.gpuIds = (0..<8).map(String.init)
    reg.runningReplicas = [running]
    reg.startedAtUnixMs = 1_760_000_000_123
    reg.workerVersion = "0.1.0"
    return reg
}

private func heartbeat() -> PBHeartbeat {
    var load = PBReplicaLoad()
    load.replicaID = "app#llm#abc123"
    load.runningRequests = 5
    load.state = .running

    var idle = PBReplicaLoad()
    idle.replicaID = "app#embed#q9"
    idle.state = .starting

    var health = PBNodeHealth()
    health.status = .degraded
    health.message = "GPU 3 ECC errors"

    var hb = PBHeartbeat()
    hb.nodeID = "node-5d1e"
    hb.sequence = 42
    hb.sentAtUnixMs = 1_760_000_010_000
    hb.replicas = [load, idle]
    hb.health = health
    return hb
}

private func stateReport() -> PBReplicaStateReport {
    var report = PBReplicaStateReport()
    report.replicaID = "app#llm#abc123"
    report.state = .failed
    report.message = "child exited with status 137"
    report.atUnixMs = 1_760_000_020_000
    report.specVersion = "v7-3f2a"
    return report
}

private func spec(command: Bool) -> PBReplicaSpec {
    var spec = PBReplicaSpec()
    if command {
        var cmd = PBProcessCommand()
        cmd.argv = ["python3", "-m", "server", "--port", "0"]
        spec.command = cmd
    } else {
        spec.handlerName = "EchoHandler"
    }
    spec.userConfigJson = Data(#"{"threshold":0.25,"labels":["a","b"]}"#.utf8)
    spec.env = ["HF_HOME": "/cache/hf", "LOG_LEVEL": "debug"]
    spec.workingDir = "/srv/app"
    spec.maxOngoingRequests = 5
    spec.maxQueuedRequests = -1
    spec.gracefulShutdownTimeoutMs = 20_000
    spec.healthCheckPeriodMs = 10_000
    spec.healthCheckTimeoutMs = 30_000
    spec.healthPath = "/-/healthz"
    spec.version = "v7-3f2a"
    return spec
}

private func workerMessages() -> [PBWorkerMessage] {
    var ack = PBCommandAck()
    ack.accepted = false
    ack.message = "unknown handler EchoHandler"

    let kinds: [PBWorkerMessage.OneOf_Kind] = [
        .register(registerNode()),
        .heartbeat(heartbeat()),
        .replicaState(stateReport()),
        .ack(ack),
    ]
    return kinds.enumerated().map { index, kind in
        var msg = PBWorkerMessage()
        msg.sequence = UInt64(index + 1)
        msg.inReplyTo = UInt64(index * 3)
        msg.kind = kind
        return msg
    }
}

private func headMessages() -> [PBHeadMessage] {
    var answer = PBRegisterAnswer()
    answer.accepted = false
    answer.refusalReason = "protocol version 9 not supported"
    answer.nodeID = "node-5d1e"
    answer.heartbeatIntervalMs = 1_000
    answer.headInstanceID = "head-8c1f"
    answer.protocolVersion = 1

    var start = PBStartReplica()
    start.replicaID = "app#llm#abc123"
    start.appName = "app"
    start.deploymentName = "llm"
    start.spec = spec(command: true)
    start.grant = grant()

    var startLinked = start
    startLinked.spec = spec(command: false)

    var stop = PBStopReplica()
    stop.replicaID = "app#llm#abc123"
    stop.gracefulTimeoutMs = 5_000
    stop.reason = "downscale"

    var reconfigure = PBReconfigureReplica()
    reconfigure.replicaID = "app#llm#abc123"
    reconfigure.userConfigJson = Data(#"{"threshold":0.5}"#.utf8)
    reconfigure.maxOngoingRequests = 8
    reconfigure.specVersion = "v8-0011"

    var ping = PBPing()
    ping.sentAtUnixMs = 1_760_000_000_000

    let kinds: [PBHeadMessage.OneOf_Kind] = [
        .registerAnswer(answer),
        .startReplica(start),
        .startReplica(startLinked),
        .stopReplica(stop),
        .reconfigureReplica(reconfigure),
        .ping(ping),
    ]
    return kinds.enumerated().map { index, kind in
        var msg = PBHeadMessage()
        msg.sequence = UInt64(index + 1)
        msg.inReplyTo = UInt64(index * 2)
        msg.kind = kind
        return msg
    }
}

// MARK: - Tests

@Suite("Control-plane protobuf messages")
struct ServeProtoTests {
    @Test("Every WorkerMessage kind survives a binary round trip")
    func workerMessageBinaryRoundTrip() throws {
        let messages = workerMessages()
        #expect(messages.count == 4)
        for original in messages {
            let bytes: [UInt8] = try original.serializedBytes()
            let decoded = try PBWorkerMessage(serializedBytes: bytes)
            #expect(decoded == original)
            #expect(decoded.kind != nil)
        }
    }

    @Test("Every HeadMessage kind survives a binary round trip")
    func headMessageBinaryRoundTrip() throws {
        for original in headMessages() {
            let bytes: [UInt8] = try original.serializedBytes()
            let decoded = try PBHeadMessage(serializedBytes: bytes)
            #expect(decoded == original)
            #expect(decoded.kind != nil)
        }
    }

    @Test("Oneof accessors and proto3 optional presence decode as sent")
    func oneofAndPresence() throws {
        let start = headMessages()[1]
        let decoded = try PBHeadMessage(serializedBytes: try start.serializedBytes() as [UInt8])
        guard case .startReplica(let sr)? = decoded.kind else {
            Issue.record("expected startReplica, got \(String(describing: decoded.kind))")
            return
        }
        #expect(sr.spec.command.argv.first == "python3")
        #expect(sr.spec.handlerName.isEmpty)
        #expect(sr.grant.resources.quantitiesE4["GPU"] == 5_000)

        // An unset optional stays unset ("keep current value").
        var reconfigure = PBReconfigureReplica()
        reconfigure.replicaID = "r"
        reconfigure.maxOngoingRequests = 3
        let back = try PBReconfigureReplica(serializedBytes: try reconfigure.serializedBytes() as [UInt8])
        #expect(back.hasMaxOngoingRequests)
        #expect(!back.hasUserConfigJson)
        // Set-but-empty user_config is distinguishable from unset.
        reconfigure.userConfigJson = Data()
        let back2 = try PBReconfigureReplica(serializedBytes: try reconfigure.serializedBytes() as [UInt8])
        #expect(back2.hasUserConfigJson)
        #expect(back2.userConfigJson.isEmpty)
    }

    @Test("Unknown fields from a newer peer survive decode and re-encode")
    func unknownFieldsSurvive() throws {
        let original = workerMessages()[1]  // heartbeat
        var bytes: [UInt8] = try original.serializedBytes()
        // Field 999 (varint) = 150 and field 1000 (length-delimited) = "new",
        // neither known to this schema version.
        let unknown: [UInt8] = [0xB8, 0x3E, 0x96, 0x01, 0xC2, 0x3E, 0x03, 0x6E, 0x65, 0x77]
        bytes += unknown

        let decoded = try PBWorkerMessage(serializedBytes: bytes)
        #expect(decoded.heartbeat == original.heartbeat)
        #expect(decoded.sequence == original.sequence)
        #expect([UInt8](decoded.unknownFields.data) == unknown)

        let reencoded: [UInt8] = try decoded.serializedBytes()
        #expect(reencoded.count == bytes.count)
        #expect(Array(reencoded.suffix(unknown.count)) == unknown)
        #expect(try PBWorkerMessage(serializedBytes: reencoded) == decoded)

        // Unknown enum values are kept too (proto3 open enums).
        var report = PBReplicaStateReport()
        report.state = PBReplicaState(rawValue: 42)!
        let reportBack = try PBReplicaStateReport(serializedBytes: try report.serializedBytes() as [UInt8])
        #expect(reportBack.state == .UNRECOGNIZED(42))
        #expect(reportBack.state.rawValue == 42)
    }

    @Test("Fixed-point resource quantities are exact")
    func fixedPointResources() throws {
        #expect(fixedPoint(0.5) == 5_000)
        #expect(fixedPoint(0.5) + fixedPoint(0.5) == fixedPoint(1))
        #expect((0..<10).map { _ in fixedPoint(0.1) }.reduce(0, +) == fixedPoint(1))

        var set = PBResourceSet()
        set.quantitiesE4["GPU"] = fixedPoint(0.5)
        let back = try PBResourceSet(serializedBytes: try set.serializedBytes() as [UInt8])
        #expect(back.quantitiesE4["GPU"] == 5_000)
        #expect(back.quantitiesE4["CPU"] == nil)
    }

    @Test("Decoding garbage bytes throws", arguments: [
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] as [UInt8],  // overlong varint tag
        [0x52, 0x20, 0x0A] as [UInt8],  // `register` claims 32 bytes, has 1
        [0x0F] as [UInt8],  // field 1 with invalid wire type 7
    ])
    func garbageThrows(bytes: [UInt8]) {
        #expect(throws: (any Error).self) {
            _ = try PBWorkerMessage(serializedBytes: bytes)
        }
        #expect(throws: (any Error).self) {
            _ = try PBHeadMessage(serializedBytes: bytes)
        }
    }

    @Test("A HeadMessage survives a JSON round trip")
    func jsonRoundTrip() throws {
        let original = headMessages()[1]  // startReplica with every field set
        let json = try original.jsonString()
        #expect(json.contains("\"startReplica\""))
        #expect(json.contains("\"quantitiesE4\""))
        let decoded = try PBHeadMessage(jsonString: json)
        #expect(decoded == original)

        // Worker side too, through the JSON text format's field names.
        let worker = workerMessages()[0]
        let workerBack = try PBWorkerMessage(jsonUTF8Bytes: try worker.jsonUTF8Bytes() as [UInt8])
        #expect(workerBack == worker)
    }
}
