import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import ServeWire

/// How much fuzzing a run does: `FUZZ_ITERATIONS` inputs per parser (CI: the default; `make
/// fuzz`: more), from `FUZZ_SEED`, so a failure repeats exactly with the seed it prints.
enum FuzzSettings {
    static var iterations: Int {
        ProcessInfo.processInfo.environment["FUZZ_ITERATIONS"].flatMap(Int.init) ?? 100_000
    }

    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_C0F1
    }

    /// Inputs for the smaller runs over real sockets.
    static var socketIterations: Int { max(200, self.iterations / 100) }

    /// The in-process inputs are cut into this many parts run side by side, part `p` from seed
    /// `seed + p`: a fixed number, so a seed means the same inputs on any machine.
    static let parts = 2

    /// Runs `body(part, inputs)` for each part on its own thread; returns what they return.
    static func inParallel<Result: Sendable>(
        _ iterations: Int, _ body: @escaping @Sendable (Int, Range<Int>) -> Result
    ) -> [Result] {
        let collected = NIOLockedValueBox<[(Int, Result)]>([])
        DispatchQueue.concurrentPerform(iterations: self.parts) { part in
            let range = (iterations * part / self.parts)..<(iterations * (part + 1) / self.parts)
            let result = body(part, range)
            collected.withLockedValue { $0.append((part, result)) }
        }
        return collected.withLockedValue { $0.sorted { $0.0 < $1.0 }.map(\.1) }
    }
}

/// Byte-level mutations shared by the fuzzers: flips, dictionary insertions, deletions,
/// duplications, truncations.
struct Mutator {
    let dictionary: [[UInt8]]

    init(_ dictionary: [String]) {
        self.dictionary = dictionary.map { Array($0.utf8) }
    }

    func mutate(_ bytes: inout [UInt8], using generator: inout SeededGenerator) {
        let position = Int.random(in: 0...bytes.count, using: &generator)
        switch Int.random(in: 0..<6, using: &generator) {
        case 0 where !bytes.isEmpty:
            bytes[min(position, bytes.count - 1)] = UInt8.random(in: 0...255, using: &generator)
        case 1:
            bytes.insert(contentsOf: self.dictionary.randomElement(using: &generator)!, at: position)
        case 2:
            bytes.removeSubrange(position..<min(bytes.count, position + Int.random(in: 1...8, using: &generator)))
        case 3:
            let end = min(bytes.count, position + Int.random(in: 1...32, using: &generator))
            bytes.insert(contentsOf: Array(bytes[position..<end]), at: position)
        case 4:
            bytes.removeSubrange(position...)
        default:
            bytes.insert(UInt8.random(in: 0...255, using: &generator), at: position)
        }
    }
}

/// The ingress's HTTP/1.1 side (NIO's parser, then `HTTP1ServerConnection`) fed random and
/// mutated requests. Whatever arrives, the server answers only with 100, 200 or a clean 4xx
/// (400 malformed, 413 body too large, 431 too many fields), never a 5xx, never crashes, and
/// leaves no handler waiting once the client has gone.
@Suite("Fuzz: HTTP/1.1 ingress parser", .serialized)
struct FuzzHTTP1Tests {
    static let seeds: [String] = [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /p?q=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: fuzz\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        "PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "b", count: 2000),
        "DELETE /api/serve/applications/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 0\r\n\r\n",
    ]

    static let mutator = Mutator([
        "\r\n", "\n", "\r", " ", ":", "\t", "\0", "\u{7f}", "\r\n\r\n", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9",
        "Content-Length: ", "Content-Length: 0\r\n", "Content-Length: -1\r\n", "Content-Length: 99999999999999999999\r\n",
        "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip, chunked\r\n", "Expect: 100-continue\r\n",
        "Connection: close\r\n", "Host: \r\n", "ffffffffffffffff\r\n", "0\r\n\r\n", ";a=b", "GET ", "POST ", "CONNECT ",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "%00", "/../", "é", "X-A: b\r\n",
    ])

    static let allowedStatuses: Set<Int> = [100, 200, 400, 413, 431]

    /// Answers every request with a fixed body (so responses never echo input and can be told
    /// apart), reading at most 1 KiB of a request body (413 past it).
    final class Handler: Sendable {
        let started = NIOLockedValueBox(0)
        let finished = NIOLockedValueBox(0)

        func handle(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter) async throws {
            self.started.withLockedValue { $0 += 1 }
            defer { self.finished.withLockedValue { $0 += 1 } }
            if request.head.method == .post || request.head.method == .put {
                let body = try await request.body.collect(upTo: 1024)
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "read \(body.readableBytes)"))
            } else {
                try await writer.respond(HTTPResponse(status: .ok), body: ByteBuffer(string: "ok"))
            }
        }
    }

    static func input(_ iteration: Int, using generator: inout SeededGenerator) -> [UInt8] {
        switch iteration % 10 {
        case 0:
            return (0..<Int.random(in: 0...200, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        case 1:
            // Too many fields, or fields too long.
            let count = Int.random(in: 90...140, using: &generator)
            let length = Bool.random(using: &generator) ? 1 : Int.random(in: 1...40, using: &generator)
            return Array(("GET / HTTP/1.1\r\n" + (0..<count).map { "X-\($0): \(String(repeating: "v", count: length))\r\n" }.joined() + "\r\n").utf8)
        case 2:
            let first = Array(self.seeds.randomElement(using: &generator)!.utf8)
            let second = Array(self.seeds.randomElement(using: &generator)!.utf8)
            return Array(first[..<Int.random(in: 0...first.count, using: &generator)])
                + second[Int.random(in: 0...second.count, using: &generator)...]
        default:
            var bytes = Array(self.seeds.randomElement(using: &generator)!.utf8)
            for _ in 0..<Int.random(in: 1...5, using: &generator) { self.mutator.mutate(&bytes, using: &generator) }
            return bytes
        }
    }

    /// The status codes in a server's output. Bodies are fixed texts without "HTTP/", so every
    /// occurrence starts a status line.
    static func statuses(in output: [UInt8]) -> [Int]? {
        let marker = Array("HTTP/1.".utf8)
        var statuses: [Int] = []
        var index = 0
        while index + marker.count + 5 <= output.count {
            guard output[index] == marker[0], output[index..<index + marker.count].elementsEqual(marker) else {
                index += 1
                continue
            }
            // "HTTP/1.x NNN"
            let digits = output[(index + marker.count + 2)..<(index + marker.count + 5)]
            guard output[index + marker.count + 1] == UInt8(ascii: " "), digits.allSatisfy({ (48...57).contains($0) }) else {
                return nil
            }
            statuses.append(digits.reduce(0) { $0 * 10 + Int($1 - 48) })
            index += marker.count + 5
        }
        if !output.isEmpty && statuses.isEmpty { return nil }
        return statuses
    }

    @Test("random and mutated requests, in process: only 100, 200 or a clean 4xx; no handler left waiting")
    func inProcess() throws {
        let iterations = FuzzSettings.iterations
        let seed = FuzzSettings.seed
        struct Outcome: Sendable {
            var seen: [Int: Int] = [:]
            var failures: [String] = []
            var slowest: Duration = .zero
        }
        let outcomes = FuzzSettings.inParallel(iterations) { (part: Int, inputs: Range<Int>) -> Outcome in
            var outcome = Outcome()
            do { try Self.run(inputs, seed: seed, part: part, into: &outcome.seen, &outcome.failures, &outcome.slowest) } catch {
                outcome.failures.append("seed \(seed), part \(part): \(error)")
            }
            return outcome
        }
        for failure in outcomes.flatMap(\.failures).prefix(20) { Issue.record(Comment(rawValue: failure)) }
        let seen = outcomes.reduce(into: [Int: Int]()) { all, outcome in all.merge(outcome.seen, uniquingKeysWith: +) }
        let slowest = outcomes.map(\.slowest).max() ?? .zero
        print("HTTP/1 fuzz: \(iterations) inputs (seed \(seed)), statuses \(seen.sorted { $0.key < $1.key }), slowest \(slowest)")
        for status in [200, 400, 413, 431] {
            #expect(seen[status, default: 0] > 0, "no input got \(status): the mix should reach every outcome")
        }
        #expect(slowest < .seconds(2))
    }

    /// One part of the in-process run: a fresh connection per input, on this thread.
    static func run(
        _ inputs: Range<Int>, seed: UInt64, part: Int,
        into seen: inout [Int: Int], _ failures: inout [String], _ slowest: inout Duration
    ) throws {
        var generator = SeededGenerator(seed: seed &+ UInt64(part))
        var configuration = HTTP1Configuration()
        configuration.maxHeaderBytes = 4 << 10
        // Time does not pass in process, so the timers would never fire; arming them per input
        // is most of an embedded event loop's work. They have their own tests (ServerLimitsTests).
        configuration.idleTimeout = nil
        configuration.requestHeadTimeout = nil
        let handler = Handler()
        let logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        let clock = ContinuousClock()
        for iteration in inputs {
            let input = Self.input(iteration, using: &generator)
            let start = clock.now
            let channel = EmbeddedChannel()
            try HTTP1ServerConnection.configure(
                channel.pipeline.syncOperations, configuration: configuration, logger: logger,
                handler: { request, writer in try await handler.handle(request, writer) })
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            // Every fourth input split at a random point: the parser must not care how bytes arrive.
            let cut = iteration % 4 == 3 ? Int.random(in: 0...input.count, using: &generator) : input.count
            for piece in [input[..<cut], input[cut...]] where !piece.isEmpty && channel.isActive {
                _ = try? channel.writeInbound(ByteBuffer(bytes: piece))
                channel.embeddedEventLoop.run()
            }
            var output: [UInt8] = []
            while let data = try channel.readOutbound(as: IOData.self) {
                if case .byteBuffer(let buffer) = data { output += buffer.readableBytesView }
            }
            // The client goes away: anything still waiting for it must end.
            _ = try? channel.finish(acceptAlreadyClosed: true)
            channel.embeddedEventLoop.run()
            slowest = max(slowest, clock.now - start)

            let shown = String(decoding: input, as: UTF8.self).debugDescription
            guard let statuses = Self.statuses(in: output) else {
                failures.append("seed \(seed), part \(part), input \(iteration): output is not HTTP responses: \(String(decoding: output, as: UTF8.self).debugDescription)\ninput: \(shown)")
                continue
            }
            for status in statuses {
                seen[status, default: 0] += 1
                if !Self.allowedStatuses.contains(status) {
                    failures.append("seed \(seed), part \(part), input \(iteration): answered \(status): \(shown)")
                }
            }
            if handler.started.withLockedValue({ $0 }) != handler.finished.withLockedValue({ $0 }) {
                failures.append("seed \(seed), part \(part), input \(iteration): a handler is still waiting after the client left: \(shown)")
                return
            }
        }
    }

    @Test("random and mutated requests over TCP to an HTTPServer: clean answers, every connection closed, still serving")
    func overSockets() async throws {
        let iterations = FuzzSettings.socketIterations
        let seed = FuzzSettings.seed &+ 1
        var generator = SeededGenerator(seed: seed)
        var http1 = HTTP1Configuration()
        http1.maxHeaderBytes = 8 << 10
        let handler = Handler()
        let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0, http1: http1) { request, writer in
            try await handler.handle(request, writer)
        }
        var seen: [Int: Int] = [:]
        for iteration in 0..<iterations {
            var input = Self.input(iteration, using: &generator)
            // Not the HTTP/2 preface: that is the other protocol's fuzzer.
            if input.starts(with: Array("PRI".utf8)) { input[0] = UInt8(ascii: "G") }
            let raw = try await RawConnection.connect(port: server.port)
            // The server may have closed already (a refusal): then these fail, as they should.
            try? await raw.channel.writeAndFlush(ByteBuffer(bytes: input))
            // Half-close: the server sees the end of the request stream and must close too.
            try? await raw.channel.close(mode: .output)
            try await raw.waitForClose(timeout: 10)
            let output = raw.received.withLockedValue { $0 }
            guard let statuses = Self.statuses(in: output) else {
                Issue.record("seed \(seed), input \(iteration): not HTTP responses: \(raw.text.debugDescription)")
                continue
            }
            for status in statuses {
                seen[status, default: 0] += 1
                if !Self.allowedStatuses.contains(status) {
                    Issue.record("seed \(seed), input \(iteration): answered \(status) to \(String(decoding: input, as: UTF8.self).debugDescription)")
                }
            }
        }
        print("HTTP/1 socket fuzz: \(iterations) connections (seed \(seed)), statuses \(seen.sorted { $0.key < $1.key })")
        let raw = try await RawConnection.connect(port: server.port)
        try await raw.send("GET /still-here HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        try await raw.waitForClose()
        #expect(raw.text.hasPrefix("HTTP/1.1 200"))
        #expect(server.connectionCount <= 1)
        await server.close()
    }
}
