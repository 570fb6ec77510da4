import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import ServeProto
import Testing

@testable import ServeWire

@Suite("RPC framing")
struct RPCFramingTests {
    private func heartbeat(_ sequence: UInt64) -> PBHeartbeat {
        var message = PBHeartbeat()
        message.nodeID = "n-\(sequence)"
        message.sequence = sequence
        message.replicas = (0..<3).map { index in
            var load = PBReplicaLoad()
            load.replicaID = "Model#\(index)"
            load.runningRequests = UInt32(index)
            load.state = sequence % 2 == 0 ? .running : .starting
            return load
        }
        return message
    }

    @Test("messages split at every possible byte boundary decode the same")
    func everySplit() throws {
        var stream = ByteBuffer()
        let messages = (1...3).map { self.heartbeat(UInt64($0)) }
        for message in messages { try RPCMessageDecoder.frame(message, into: &stream) }
        let bytes = Array(stream.readableBytesView)
        for split in 0...bytes.count {
            var decoder = RPCMessageDecoder()
            decoder.append(ByteBuffer(bytes: bytes[..<split]))
            var decoded: [PBHeartbeat] = []
            while let frame = try decoder.next() { decoded.append(try PBHeartbeat(serializedBytes: Array(frame.readableBytesView))) }
            decoder.append(ByteBuffer(bytes: bytes[split...]))
            while let frame = try decoder.next() { decoded.append(try PBHeartbeat(serializedBytes: Array(frame.readableBytesView))) }
            try decoder.finish()
            #expect(decoded == messages, "split at \(split)")
        }
    }

    @Test("an oversized, compressed or cut-short message is an error")
    func badFrames() throws {
        var decoder = RPCMessageDecoder(maxMessageSize: 10)
        decoder.append(ByteBuffer(bytes: [0, 0, 0, 0, 11]))
        #expect(throws: RPCError.self) { _ = try decoder.next() }

        var compressed = RPCMessageDecoder()
        compressed.append(ByteBuffer(bytes: [1, 0, 0, 0, 1, 0]))
        #expect(throws: RPCError.self) { _ = try compressed.next() }

        var short = RPCMessageDecoder()
        short.append(ByteBuffer(bytes: [0, 0, 0, 0, 4, 1, 2]))
        #expect(try short.next() == nil)
        #expect(throws: RPCError.self) { try short.finish() }
    }

    @Test("error messages survive trailers, whatever their characters")
    func errorTrailers() {
        let error = RPCError(.invalidArgument, "applications[1].name: 'ünïcode' 100% wrong\nsecond line")
        #expect(RPCError.fromTrailers(error.trailers) == error)
        #expect(RPCError.fromTrailers(RPCError.okTrailers()) == nil)
        #expect(RPCError.fromTrailers(nil)?.code == .internal)
    }
}

@Suite("RPC calls", .serialized)
struct RPCCallTests {
    private func startServer(_ configure: (inout RPCRouter) -> Void) async throws -> HTTP2Server {
        var router = RPCRouter()
        configure(&router)
        let routes = router
        return try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            if try await !routes.handle(request, writer) {
                try await RPCRouter.unimplemented(request, writer)
            }
        }
    }

    @Test("a unary call carries a registration and its answer")
    func unary() async throws {
        let server = try await self.startServer { router in
            router.unary("/serve.v1.Control/Register") { (request: PBRegisterNode, context: RPCContext) in
                var answer = PBRegisterAnswer()
                answer.accepted = request.totalResources.quantitiesE4["CPU"] == 80_000
                answer.nodeID = request.nodeID
                answer.heartbeatIntervalMs = 10_000
                answer.refusalReason = context.headers[.authorization] ?? "no token"
                return answer
            }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let client = RPCClient(connection: connection, metadata: [.authorization: "Bearer secret"])
        var registration = PBRegisterNode()
        registration.nodeID = "n-1"
        registration.totalResources.quantitiesE4 = ["CPU": 80_000, "GPU": 5_000]
        let answer = try await client.unary("/serve.v1.Control/Register", registration, as: PBRegisterAnswer.self)
        #expect(answer.accepted)
        #expect(answer.nodeID == "n-1")
        #expect(answer.refusalReason == "Bearer secret")
        await connection.close()
        await server.close()
    }

    @Test("a handler's error reaches the caller with its code and message; unknown methods are unimplemented")
    func errors() async throws {
        let server = try await self.startServer { router in
            router.unary("/t/Fail") { (_: PBPing, _: RPCContext) -> PBCommandAck in
                throw RPCError(.failedPrecondition, "node n-1 is draining")
            }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let client = RPCClient(connection: connection)
        await #expect(throws: RPCError(.failedPrecondition, "node n-1 is draining")) {
            _ = try await client.unary("/t/Fail", PBPing(), as: PBCommandAck.self)
        }
        await #expect(throws: RPCError(.unimplemented, "no RPC method /t/Missing")) {
            _ = try await client.unary("/t/Missing", PBPing(), as: PBCommandAck.self)
        }
        await connection.close()
        await server.close()
    }

    @Test("a call past its deadline fails with deadlineExceeded at the client; the connection lives on")
    func deadline() async throws {
        let server = try await self.startServer { router in
            router.unary("/t/Slow") { (_: PBPing, _: RPCContext) -> PBCommandAck in
                try await Task.sleep(for: .seconds(30))
                return PBCommandAck()
            }
            router.unary("/t/Fast") { (ping: PBPing, _: RPCContext) -> PBCommandAck in
                PBCommandAck.with { $0.message = "\(ping.sentAtUnixMs)" }
            }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let client = RPCClient(connection: connection)
        let started = ContinuousClock.now
        do {
            _ = try await client.unary("/t/Slow", PBPing(), as: PBCommandAck.self, timeout: .milliseconds(200))
            Issue.record("the slow call should have failed")
        } catch let error as RPCError {
            #expect(error.code == .deadlineExceeded)
        }
        #expect(ContinuousClock.now - started < .seconds(10))
        var ping = PBPing()
        ping.sentAtUnixMs = 42
        let answer = try await client.unary("/t/Fast", ping, as: PBCommandAck.self)
        #expect(answer.message == "42")
        await connection.close()
        await server.close()
    }

    @Test("a bidirectional stream carries interleaved messages both ways, server first")
    func bidirectional() async throws {
        let server = try await self.startServer { router in
            router.bidirectional("/serve.v1.Control/Connect") { (inbound: RPCInbound<PBWorkerMessage>, outbound: RPCOutbound<PBHeadMessage>, _: RPCContext) in
                // The head speaks first, before the worker has sent anything.
                var hello = PBHeadMessage()
                hello.sequence = 1
                hello.ping = PBPing()
                try await outbound.send(hello)
                var sequence: UInt64 = 1
                for try await message in inbound {
                    sequence += 1
                    var answer = PBHeadMessage()
                    answer.sequence = sequence
                    answer.inReplyTo = message.sequence
                    try await outbound.send(answer)
                }
            }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let client = RPCClient(connection: connection)
        let call = try await client.bidirectional(
            "/serve.v1.Control/Connect", requestType: PBWorkerMessage.self, responseType: PBHeadMessage.self)
        let responses = try await call.responses()
        var iterator = responses.makeAsyncIterator()
        let first = try #require(try await iterator.next())
        #expect(first.ping == PBPing())
        for sequence in 1...1000 as ClosedRange<UInt64> {
            var message = PBWorkerMessage()
            message.sequence = sequence
            message.heartbeat = PBHeartbeat()
            try await call.send(message)
            let answer = try #require(try await iterator.next())
            #expect(answer.inReplyTo == sequence)
        }
        try await call.finish()
        #expect(try await iterator.next() == nil)
        await connection.close()
        await server.close()
    }

    @Test("a bidirectional call on a connection that dies fails with unavailable")
    func bidirectionalPeerDies() async throws {
        let entered = NIOLockedValueBox(false)
        let server = try await self.startServer { router in
            router.bidirectional("/t/Hold") { (inbound: RPCInbound<PBPing>, outbound: RPCOutbound<PBCommandAck>, _: RPCContext) in
                entered.withLockedValue { $0 = true }
                try await outbound.send(PBCommandAck())
                for try await _ in inbound {}
            }
        }
        let connection = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let call = try await RPCClient(connection: connection).bidirectional("/t/Hold", requestType: PBPing.self, responseType: PBCommandAck.self)
        var iterator = try await call.responses().makeAsyncIterator()
        _ = try await iterator.next()
        await server.close()
        do {
            while try await iterator.next() != nil {}
            Issue.record("the call should fail when the server goes away")
        } catch let error as RPCError {
            #expect(error.code == .unavailable, "got \(error)")
        }
        #expect(entered.withLockedValue { $0 })
    }
}
