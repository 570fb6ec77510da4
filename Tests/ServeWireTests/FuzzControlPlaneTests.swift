import Foundation
import HTTPTypes
import NIOCore
import ServeProto
import SwiftProtobuf
import Testing

@testable import ServeWire

/// The control plane's decoding fed random and mutated input: protobuf messages (`PB*`, both
/// directions) and the RPC framing around them. Decoding either yields a message that
/// serializes and decodes back to itself, or throws; the framing yields exactly the messages
/// that were framed however the bytes are chunked, and refuses the rest with an RPC status.
@Suite("Fuzz: control-plane decoding", .serialized)
struct FuzzControlPlaneTests {
    /// Messages with every kind of field set, as mutation seeds.
    static let workerSeeds: [PBWorkerMessage] = [
        PBWorkerMessage.with {
            $0.sequence = 1
            $0.register = PBRegisterNode.with {
                $0.nodeID = "n-1"
                $0.address = "10.0.0.1"
                $0.port = 7000
                $0.totalResources = PBResourceSet.with { $0.quantitiesE4 = ["CPU": 80_000, "GPU": 10_000, "custom": 5] }
                $0.labels = ["zone": "a"]
                $0.gpuIds = ["0", "1"]
                $0.handlerNames = ["echo", "env"]
                $0.runningReplicas = [PBRunningReplica.with {
                    $0.replicaID = "A#1"
                    $0.appName = "app"
                    $0.deploymentName = "A"
                    $0.specVersion = "abc"
                    $0.state = .running
                }]
            }
        },
        PBWorkerMessage.with {
            $0.sequence = 2
            $0.heartbeat = PBHeartbeat.with {
                $0.nodeID = "n-1"
                $0.sequence = 9
                $0.sentAtUnixMs = 1_700_000_000_000
                $0.replicas = [PBReplicaLoad.with { $0.replicaID = "A#1"; $0.runningRequests = 3; $0.state = .running }]
            }
        },
        PBWorkerMessage.with {
            $0.replicaState = PBReplicaStateReport.with { $0.replicaID = "A#1"; $0.state = .failed; $0.message = "exit 1 ✗" }
        },
        PBWorkerMessage.with { $0.ack = PBCommandAck.with { $0.accepted = false; $0.message = "no replica A#9" } },
    ]

    static let headSeeds: [PBHeadMessage] = [
        PBHeadMessage.with {
            $0.registerAnswer = PBRegisterAnswer.with { $0.accepted = true; $0.nodeID = "n-1"; $0.heartbeatIntervalMs = 500 }
        },
        PBHeadMessage.with {
            $0.sequence = 3
            $0.startReplica = PBStartReplica.with {
                $0.replicaID = "A#1"
                $0.appName = "app"
                $0.deploymentName = "A"
                $0.spec = PBReplicaSpec.with {
                    $0.command = PBProcessCommand.with { $0.argv = ["python3", "m.py"] }
                    $0.env = ["OMP_NUM_THREADS": "2"]
                    $0.userConfigJson = Data(#"{"k": 1}"#.utf8)
                    $0.maxOngoingRequests = 5
                    $0.version = "v"
                }
                $0.grant = PBResourceGrant.with { $0.gpuIds = ["0"]; $0.ompNumThreads = 2 }
            }
        },
        PBHeadMessage.with { $0.stopReplica = PBStopReplica.with { $0.replicaID = "A#1"; $0.gracefulTimeoutMs = 20_000 } },
        PBHeadMessage.with { $0.reconfigureReplica = PBReconfigureReplica.with { $0.replicaID = "A#1"; $0.maxOngoingRequests = 2 } },
    ]

    static let mutator = Mutator(["\u{0}", "\u{ff}\u{ff}\u{ff}\u{ff}\u{0f}", "\u{80}", "\u{7f}", "\u{2}\u{ff}\u{ff}\u{ff}\u{ff}\u{7}"])

    /// One input: random bytes, a mutated message, or a message with a random field appended.
    static func input(_ iteration: Int, seeds: [[UInt8]], using generator: inout SeededGenerator) -> [UInt8] {
        switch iteration % 4 {
        case 0:
            return generator.bytes(Int.random(in: 0...64, using: &generator))
        case 1:
            // A random (tag, wire type) with a random payload, after a valid message.
            let tag = UInt8.random(in: 0...255, using: &generator)
            return seeds.randomElement(using: &generator)! + [tag] + generator.bytes(Int.random(in: 0...12, using: &generator))
        default:
            var bytes = seeds.randomElement(using: &generator)!
            for _ in 0..<Int.random(in: 1...4, using: &generator) { self.mutator.mutate(&bytes, using: &generator) }
            return bytes
        }
    }

    /// Decodes `bytes` as `M`; whatever decodes must encode and decode back to itself.
    static func check<M: SwiftProtobuf.Message>(_ type: M.Type, _ bytes: [UInt8]) -> String? {
        guard let message = try? M(serializedBytes: bytes) else { return nil }
        do {
            let again: [UInt8] = try message.serializedBytes()
            let back = try M(serializedBytes: again)
            return back.isEqualTo(message: message) ? nil : "decoded, but did not read back equal"
        } catch {
            return "decoded, but did not encode and decode again: \(error)"
        }
    }

    @Test("PB messages both ways: random and mutated bytes decode to a message that round-trips, or are refused")
    func messages() throws {
        let iterations = FuzzSettings.iterations
        let seed = FuzzSettings.seed
        var generator = SeededGenerator(seed: seed)
        let workerSeeds = try Self.workerSeeds.map { try $0.serializedBytes() as [UInt8] }
        let headSeeds = try Self.headSeeds.map { try $0.serializedBytes() as [UInt8] }
        var decoded = 0
        for iteration in 0..<iterations {
            let toHead = iteration % 2 == 0
            let bytes = Self.input(iteration / 2, seeds: toHead ? workerSeeds : headSeeds, using: &generator)
            let problem = toHead ? Self.check(PBWorkerMessage.self, bytes) : Self.check(PBHeadMessage.self, bytes)
            if let problem {
                Issue.record("seed \(seed), input \(iteration): \(problem): \(bytes)")
            }
            if (toHead ? (try? PBWorkerMessage(serializedBytes: bytes)) != nil : (try? PBHeadMessage(serializedBytes: bytes)) != nil) {
                decoded += 1
            }
        }
        print("control-plane message fuzz: \(iterations) inputs (seed \(seed)), \(decoded) decoded")
        #expect(decoded > 0 && decoded < iterations)
    }

    @Test("RPC framing: any chunking yields exactly the framed messages; corrupt prefixes are refused with a status")
    func framing() throws {
        let iterations = FuzzSettings.iterations
        let seed = FuzzSettings.seed &+ 2
        var generator = SeededGenerator(seed: seed)
        let payloads = try Self.workerSeeds.map { try $0.serializedBytes() as [UInt8] }
        var refused = 0
        for iteration in 0..<iterations {
            // Some whole messages, framed.
            var stream: [UInt8] = []
            var framed: [[UInt8]] = []
            for _ in 0..<Int.random(in: 0...3, using: &generator) {
                let payload = payloads.randomElement(using: &generator)!
                framed.append(payload)
                stream += [0] + withUnsafeBytes(of: UInt32(payload.count).bigEndian, Array.init) + payload
            }
            let corrupt = iteration % 2 == 1
            if corrupt {
                // Then a corrupt tail: a flag, a length past the limit, a message cut short, or noise.
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: stream += [UInt8.random(in: 1...255, using: &generator), 0, 0, 0, 1, 0]
                case 1: stream += [0] + withUnsafeBytes(of: UInt32.random(in: 4097...UInt32.max, using: &generator).bigEndian, Array.init)
                case 2: stream += [0, 0, 0, 0, 9, 1, 2]
                default: stream += generator.bytes(Int.random(in: 1...20, using: &generator))
                }
            }
            var decoder = RPCMessageDecoder(maxMessageSize: 4096)
            var messages: [[UInt8]] = []
            var failure: RPCError?
            var offset = 0
            chunks: while offset < stream.count {
                let size = Int.random(in: 1...max(1, stream.count - offset), using: &generator)
                decoder.append(ByteBuffer(bytes: stream[offset..<offset + size]))
                offset += size
                do {
                    while let message = try decoder.next() { messages.append(Array(message.readableBytesView)) }
                } catch let error as RPCError {
                    failure = error
                    break chunks
                }
            }
            if failure == nil {
                do { try decoder.finish() } catch let error as RPCError { failure = error }
            }
            if !corrupt {
                if messages != framed || failure != nil {
                    Issue.record("seed \(seed), input \(iteration): \(framed.count) framed, \(messages.count) decoded, failure \(String(describing: failure))")
                }
            } else {
                // Noise may happen to frame a message; whatever decodes comes first, in order.
                if !messages.starts(with: framed.prefix(messages.count)) || messages.count < framed.count {
                    Issue.record("seed \(seed), input \(iteration): the valid messages before the corrupt tail were not all decoded")
                }
                if failure != nil { refused += 1 }
            }
        }
        print("RPC framing fuzz: \(iterations) streams (seed \(seed)), \(refused) corrupt tails refused")
        #expect(refused > iterations / 4)
    }

    @Test("garbage RPC bodies over TCP to an HTTP/2 RPC server: each call ends with a status, and it keeps serving")
    func overSockets() async throws {
        let iterations = FuzzSettings.socketIterations
        let seed = FuzzSettings.seed &+ 3
        var generator = SeededGenerator(seed: seed)
        var router = RPCRouter(maxMessageSize: 4096)
        router.bidirectional("/serve.v1.Control/Connect") {
            (inbound: RPCInbound<PBWorkerMessage>, outbound: RPCOutbound<PBHeadMessage>, _: RPCContext) in
            for try await message in inbound {
                try await outbound.send(PBHeadMessage.with { $0.inReplyTo = message.sequence })
            }
        }
        let server = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { [router] request, writer in
            if try await !router.handle(request, writer) { try await RPCRouter.unimplemented(request, writer) }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let seeds = try Self.workerSeeds.map { try $0.serializedBytes() as [UInt8] }
        var outcomes: [String: Int] = [:]
        for iteration in 0..<iterations {
            var body = Self.input(iteration, seeds: seeds, using: &generator)
            if iteration % 3 != 0 {
                // Usually a well-framed message with a garbage payload, so decoding is reached.
                body = [0] + withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body
            }
            let head = HTTPRequest(
                method: .post, scheme: "http", authority: "serve", path: "/serve.v1.Control/Connect",
                headerFields: [.contentType: RPC.contentType])
            let response = try await connection.send(head, body: ByteBuffer(bytes: body), timeout: .seconds(10))
            #expect(response.head.status == .ok)
            _ = try await response.body.collect(upTo: 1 << 20)
            let status = response.body.trailers?[RPC.statusField] ?? "none"
            outcomes[status, default: 0] += 1
            if status == "none" { Issue.record("seed \(seed), input \(iteration): the call ended without a status") }
        }
        print("RPC socket fuzz: \(iterations) calls (seed \(seed)), serve-status counts \(outcomes.sorted { $0.key < $1.key })")
        #expect(outcomes.keys.contains { $0 != "0" }, "some garbage should be refused")
        await connection.close()
        await server.close()
    }
}
