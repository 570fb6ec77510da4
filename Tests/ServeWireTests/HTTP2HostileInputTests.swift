import Foundation
import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import ServeWire

/// Raw HTTP/2 frames, for talking to the server below the client API.
enum RawFrames {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    static let emptySettings: [UInt8] = frame(type: 0x4, flags: 0, stream: 0, payload: [])
    static let goAwayType: UInt8 = 0x7

    static func frame(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8], declaredLength: Int? = nil) -> [UInt8] {
        let length = declaredLength ?? payload.count
        return [
            UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff), UInt8(length & 0xff), type, flags,
            UInt8((stream >> 24) & 0x7f), UInt8((stream >> 16) & 0xff), UInt8((stream >> 8) & 0xff), UInt8(stream & 0xff),
        ] + payload
    }

    /// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
    static func integer(_ value: Int, prefixBits: Int, firstByte: UInt8) -> [UInt8] {
        let limit = (1 << prefixBits) - 1
        if value < limit { return [firstByte | UInt8(value)] }
        var bytes = [firstByte | UInt8(limit)]
        var rest = value - limit
        while rest >= 128 {
            bytes.append(UInt8(rest % 128 + 128))
            rest /= 128
        }
        bytes.append(UInt8(rest))
        return bytes
    }

    /// A header block for `GET /` (static table entries) plus literal fields.
    static func getBlock(extra: [(String, String)] = []) -> [UInt8] {
        var block: [UInt8] = [0x82, 0x86, 0x84, 0x41, 0x09] + Array("localhost".utf8)
        for (name, value) in extra {
            block += [0x00] + integer(name.utf8.count, prefixBits: 7, firstByte: 0) + Array(name.utf8)
            block += integer(value.utf8.count, prefixBits: 7, firstByte: 0) + Array(value.utf8)
        }
        return block
    }

    /// HEADERS + CONTINUATION frames carrying `block` in pieces of at most 16 KiB.
    static func headers(stream: UInt32, block: [UInt8], endStream: Bool = true) -> [UInt8] {
        var frames: [UInt8] = []
        var offset = 0
        var first = true
        repeat {
            let end = min(offset + 16_384, block.count)
            let last = end == block.count
            let flags: UInt8 = (last ? 0x4 : 0) | (first && endStream ? 0x1 : 0)
            frames += frame(type: first ? 0x1 : 0x9, flags: flags, stream: stream, payload: Array(block[offset..<end]))
            offset = end
            first = false
        } while offset < block.count
        return frames
    }

    static func types(in bytes: [UInt8]) -> [UInt8] {
        var types: [UInt8] = []
        var offset = 0
        while offset + 9 <= bytes.count {
            let length = Int(bytes[offset]) << 16 | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            types.append(bytes[offset + 3])
            offset += 9 + length
        }
        return types
    }
}

/// A plain TCP peer that sends bytes and records what comes back until the server closes.
final class RawPeer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let received = NIOLockedValueBox<[UInt8]>([])
    let channel: any Channel

    private init(channel: any Channel) { self.channel = channel }

    static func connect(port: Int) async throws -> RawPeer {
        let holder = NIOLockedValueBox<RawPeer?>(nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let peer = RawPeer(channel: channel)
                    holder.withLockedValue { $0 = peer }
                    try channel.pipeline.syncOperations.addHandler(peer)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        _ = channel
        return holder.withLockedValue { $0! }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        self.received.withLockedValue { $0 += buffer.readableBytesView }
    }

    func send(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// What the server has sent so far.
    var receivedBytes: [UInt8] { self.received.withLockedValue { $0 } }

    /// Waits for the server to close the connection; fails the test if it does not in time.
    func waitForClose(timeout: Duration = .seconds(10)) async throws -> [UInt8] {
        let closed = self.channel.closeFuture
        let deadline = ContinuousClock.now + timeout
        while self.channel.isActive && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        if self.channel.isActive {
            try? await self.channel.close()
            throw TestFailure("the server did not close the connection within \(timeout)")
        }
        try? await closed.get()
        return self.received.withLockedValue { $0 }
    }
}

@Suite("HTTP/2 hostile input", .serialized)
struct HTTP2HostileInputTests {
    /// After each hostile connection the same server must still answer a well-behaved client.
    private func expectStillServing(_ server: HTTP2Server) async throws {
        let client = try await HTTP2ClientConnection.connect(host: "127.0.0.1", port: server.port)
        let response = try await client.send(request(.get, "/still-here"))
        #expect(String(buffer: try await response.body.collect(upTo: 100)) == "/still-here")
        await client.close()
    }

    @Test("random bytes instead of a preface close the connection")
    func randomBytes() async throws {
        let server = try await startEchoServer()
        var generator = SeededGenerator(seed: 1)
        let peer = try await RawPeer.connect(port: server.port)
        try await peer.send(generator.bytes(512))
        _ = try await peer.waitForClose()
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("an HTTP/1.1 request (a bad preface) closes the connection")
    func badPreface() async throws {
        let server = try await startEchoServer()
        let peer = try await RawPeer.connect(port: server.port)
        try await peer.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        _ = try await peer.waitForClose()
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("a frame of an unknown size error gets GOAWAY")
    func oversizedFrame() async throws {
        let server = try await startEchoServer()
        let peer = try await RawPeer.connect(port: server.port)
        // A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR (RFC 9113 §6.5).
        try await peer.send(RawFrames.preface + RawFrames.frame(type: 0x4, flags: 0, stream: 0, payload: [1, 2, 3, 4, 5]))
        let received = try await peer.waitForClose()
        #expect(RawFrames.types(in: received).contains(RawFrames.goAwayType))
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("a truncated header block is cut off after the request-head timeout")
    func truncatedFrame() async throws {
        var configuration = HTTP2Configuration()
        configuration.requestHeadTimeout = .milliseconds(300)
        let server = try await startEchoServer(configuration: configuration)
        let peer = try await RawPeer.connect(port: server.port)
        let block = RawFrames.getBlock()
        // HEADERS without END_HEADERS and no CONTINUATION: the header block never completes.
        try await peer.send(
            RawFrames.preface + RawFrames.emptySettings
                + RawFrames.frame(type: 0x1, flags: 0x1, stream: 1, payload: block)
        )
        let received = try await peer.waitForClose()
        #expect(RawFrames.types(in: received).contains(RawFrames.goAwayType))
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("a frame cut short by the peer closing is handled without a hang")
    func frameCutShort() async throws {
        let server = try await startEchoServer()
        let peer = try await RawPeer.connect(port: server.port)
        try await peer.send(
            RawFrames.preface + RawFrames.emptySettings
                + RawFrames.frame(type: 0x1, flags: 0x5, stream: 1, payload: [0x82, 0x86], declaredLength: 100)
        )
        try await peer.channel.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while server.connectionCount > 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(server.connectionCount == 0)
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("an oversized header block gets GOAWAY and the connection closes")
    func oversizedHeaders() async throws {
        let server = try await startEchoServer()
        let peer = try await RawPeer.connect(port: server.port)
        let block = RawFrames.getBlock(extra: (0..<8).map { ("x-big-\($0)", String(repeating: "v", count: 12_000)) })
        try await peer.send(RawFrames.preface + RawFrames.emptySettings + RawFrames.headers(stream: 1, block: block))
        let received = try await peer.waitForClose()
        #expect(RawFrames.types(in: received).contains(RawFrames.goAwayType))
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("a flood of empty CONTINUATION frames gets GOAWAY")
    func continuationFlood() async throws {
        let server = try await startEchoServer()
        let peer = try await RawPeer.connect(port: server.port)
        var bytes = RawFrames.preface + RawFrames.emptySettings
        bytes += RawFrames.frame(type: 0x1, flags: 0x1, stream: 1, payload: [0x82])
        for _ in 0..<1000 { bytes += RawFrames.frame(type: 0x9, flags: 0, stream: 1, payload: []) }
        try await peer.send(bytes)
        let received = try await peer.waitForClose()
        #expect(RawFrames.types(in: received).contains(RawFrames.goAwayType))
        try await self.expectStillServing(server)
        await server.close()
    }

    @Test("10,000 random inputs through a server session: no crash, bad preludes closed, errors answered with GOAWAY")
    func fuzzServerSession() async throws {
        var generator = SeededGenerator(seed: 0x5EED)
        var closed = 0
        var goAways = 0
        var answered = 0
        let validRequest = RawFrames.preface + RawFrames.emptySettings + RawFrames.headers(stream: 1, block: RawFrames.getBlock())
        for iteration in 0..<10_000 {
            let input: [UInt8]
            let kind = iteration % 3
            switch kind {
            case 0:
                input = generator.bytes(Int.random(in: 0...200, using: &generator))
            case 1:
                var bytes = RawFrames.preface + RawFrames.emptySettings
                for _ in 0..<Int.random(in: 1...5, using: &generator) {
                    let payload = generator.bytes(Int.random(in: 0...64, using: &generator))
                    let declared = Bool.random(using: &generator) ? payload.count : Int.random(in: 0...80, using: &generator)
                    bytes += RawFrames.frame(
                        type: UInt8.random(in: 0...10, using: &generator),
                        flags: UInt8.random(in: 0...255, using: &generator),
                        stream: UInt32.random(in: 0...5, using: &generator),
                        payload: payload,
                        declaredLength: declared
                    )
                }
                input = bytes
            default:
                var bytes = validRequest
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    let index = Int.random(in: RawFrames.preface.count..<bytes.count, using: &generator)
                    bytes[index] = UInt8.random(in: 0...255, using: &generator)
                }
                input = bytes
            }

            let channel = NIOAsyncTestingChannel()
            var configuration = HTTP2Configuration()
            configuration.idleTimeout = nil
            try await channel.testingEventLoop.executeInContext { [configuration] in
                try channel.pipeline.syncOperations.addHandler(
                    HTTP2Connection(
                        role: .server({ _, writer in try await writer.respond(HTTPResponse(status: .ok)) }),
                        configuration: configuration,
                        logger: .init(label: "fuzz")
                    )
                )
            }
            try await channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1)).get()
            try await channel.writeInbound(ByteBuffer(bytes: input))
            await channel.testingEventLoop.run()
            var output: [UInt8] = []
            while let buffer = try await channel.readOutbound(as: ByteBuffer.self) {
                output += buffer.readableBytesView
            }
            // A request that survived mutation is answered by its handler task, which hops back
            // to the channel's loop: give it a bounded moment.
            let handlerPending = {
                try await channel.testingEventLoop.executeInContext {
                    let connection = try channel.pipeline.syncOperations.handler(type: HTTP2Connection.self)
                    return connection.streams.values.contains { $0.headReceived && !$0.headSubmitted && $0.failure == nil }
                }
            }
            if channel.isActive, try await handlerPending() {
                for _ in 0..<2000 where try await handlerPending() {
                    try await Task.sleep(for: .milliseconds(1))
                    await channel.testingEventLoop.run()
                    while let buffer = try await channel.readOutbound(as: ByteBuffer.self) {
                        output += buffer.readableBytesView
                    }
                }
            }
            let frames = RawFrames.types(in: output)
            if frames.contains(RawFrames.goAwayType) { goAways += 1 }
            if frames.contains(0x1) { answered += 1 }
            if !channel.isActive {
                closed += 1
            }
            if kind == 0 && !input.starts(with: RawFrames.preface) && input.count >= RawFrames.preface.count {
                #expect(!channel.isActive, "a bad preface left the connection open (iteration \(iteration))")
            }
            _ = try? await channel.finish()
        }
        // The three kinds of input each reach their paths: closes, GOAWAYs and real answers.
        #expect(closed > 3_000)
        #expect(goAways > 1_000)
        #expect(answered > 100)
    }
}
