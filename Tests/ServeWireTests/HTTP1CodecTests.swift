import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing

@testable import ServeWire

/// The HTTP/1.1 codec (`HTTP1Codec.swift`): header values are bytes (RFC 9110 §5.5), so a byte
/// that is not UTF-8 passes both ways unchanged, where NIO's parser made it U+FFFD; and the
/// parser's RFC 9112 rules, fed bytes directly.
@Suite("HTTP/1.1 codec")
struct HTTP1CodecTests {
    /// Every part `bytes` parses into (fed `split` bytes at a time), or the error.
    static func parse(
        _ bytes: [UInt8], kind: HTTP1Parser.Kind = .request, split: Int = .max, methods: HTTP1MethodQueue? = nil
    )
        throws -> [HTTP1Parser.Part]
    {
        var parser = HTTP1Parser(kind: kind, maxHeadBytes: 1024, methods: methods)
        var buffer = ByteBuffer()
        var parts: [HTTP1Parser.Part] = []
        var offset = 0
        while offset < bytes.count {
            let piece = bytes[offset..<min(bytes.count, offset + split)]
            offset += piece.count
            buffer.writeBytes(piece)
            while let part = try parser.next(&buffer) { parts.append(part) }
        }
        if let last = try parser.endOfInput(&buffer) { parts.append(last) }
        return parts
    }

    static func requestHead(_ parts: [HTTP1Parser.Part]) -> HTTPRequestHead? {
        for case .requestHead(let head) in parts { return head }
        return nil
    }

    static func body(_ parts: [HTTP1Parser.Part]) -> String {
        var body = ""
        for case .body(let chunk) in parts { body += String(buffer: chunk) }
        return body
    }

    @Test("a value byte 0xE9 reaches HTTPFields as 0xE9, and goes out as 0xE9", arguments: [1, 3, Int.max])
    func valueBytesRoundTrip(split: Int) throws {
        let request =
            Array("GET /x HTTP/1.1\r\nHost: a\r\nX-Latin: caf".utf8) + [0xE9, 0x20, 0xFF] + Array("\r\n\r\n".utf8)
        let head = try #require(Self.requestHead(try Self.parse(request, split: split)))
        let fields = HTTPFields(converting: head.headers)
        let field = try #require(fields.first { $0.name.canonicalName == "x-latin" })
        #expect(field.withUnsafeBytesOfValue { Array($0) } == Array("caf".utf8) + [0xE9, 0x20, 0xFF])

        // And back: the writer puts the same bytes on the wire.
        var writer = HTTP1Writer()
        let written = writer.head(
            startLine: "HTTP/1.1 200 OK", headers: HTTPHeaders(converting: fields), chunked: false,
            allocator: ByteBufferAllocator())
        let wire = Array(written.readableBytesView)
        let expected = Array("X-Latin: caf".utf8) + [0xE9, 0x20, 0xFF] + Array("\r\n".utf8)
        #expect(wire.firstRange(of: expected) != nil, "\(wire)")
    }

    @Test("obs-fold is replaced by a space (RFC 9112 §5.2); whitespace before the first field is refused")
    func obsFold() throws {
        let head = try #require(
            Self.requestHead(
                try Self.parse(Array("GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n  two\r\n\tthree\r\n\r\n".utf8))))
        #expect(head.headers["x-long"] == ["one two three"])
        #expect(throws: HTTPParserError.self) {
            _ = try Self.parse(Array("GET / HTTP/1.1\r\n Host: a\r\n\r\n".utf8))
        }
    }

    @Test(
        "malformed heads are errors (the server answers 400)",
        arguments: [
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",  // whitespace before the colon (RFC 9112 §5.1)
            "GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",  // a name that is not a token
            "GET / HTTP/1.1\r\nX: a\u{01}b\r\n\r\n",  // a control character in a value
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",  // a bare CR
            "GET  / HTTP/1.1\r\n\r\n",  // two spaces
            "GET / HTTP/2.0\r\n\r\n",  // not HTTP/1.x
            "G@T / HTTP/1.1\r\n\r\n",  // a method that is not a token
            "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",  // smuggling
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  // not a chunk size
        ])
    func malformed(text: String) {
        #expect(throws: HTTPParserError.self) { _ = try Self.parse(Array(text.utf8)) }
    }

    @Test("a head larger than maxHeadBytes is an error")
    func headLimit() {
        let big = "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 2000) + "\r\n\r\n"
        #expect(throws: HTTPParserError.headerOverflow) { _ = try Self.parse(Array(big.utf8), split: 100) }
    }

    @Test("bodies: by length, chunked with extensions and trailers, pipelined requests, leading empty lines")
    func bodies() throws {
        let text =
            "\r\nPOST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            + "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n"
            + "GET /c HTTP/1.1\r\n\r\n"
        for split in [1, 7, Int.max] {
            let parts = try Self.parse(Array(text.utf8), split: split)
            let heads = parts.compactMap { part -> String? in
                if case .requestHead(let head) = part { return head.uri }
                return nil
            }
            #expect(heads == ["/a", "/b", "/c"])
            #expect(Self.body(parts) == "helloabcde")
            let trailers = parts.compactMap { part -> HTTPHeaders? in
                if case .end(let trailers) = part { return trailers }
                return nil
            }
            #expect(trailers.first?["x-sum"] == ["9"])
        }
    }

    @Test("responses: no body for HEAD, 1xx, 204, 304; to the end of the connection without a length")
    func responseFraming() throws {
        let methods = HTTP1MethodQueue()
        methods.append(.HEAD)
        methods.append(.GET)
        methods.append(.GET)
        let text =
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  // HEAD: no body
            + "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nX-Latin: \u{E9}\r\n\r\nuntil close"
        let bytes = Array(text.unicodeScalars.map { UInt8($0.value) })
        let parts = try Self.parse(bytes, kind: .response, methods: methods)
        let statuses = parts.compactMap { part -> UInt? in
            if case .responseHead(let head) = part { return head.status.code }
            return nil
        }
        #expect(statuses == [200, 100, 204, 200])
        #expect(Self.body(parts) == "until close")
        if case .end = parts.last {
        } else {
            Issue.record("the body ending with the connection did not end the response")
        }
        let last = parts.compactMap { part -> HTTPResponseHead? in
            if case .responseHead(let head) = part { return head }
            return nil
        }.last
        #expect(
            HTTPFields(converting: last!.headers).first { $0.name.canonicalName == "x-latin" }?.withUnsafeBytesOfValue {
                Array($0)
            } == [0xE9])
    }

    @Test("a response cut short by the end of the connection is an error, not an end")
    func cutResponse() {
        let methods = HTTP1MethodQueue()
        methods.append(.GET)
        #expect(throws: HTTPParserError.invalidEOFState) {
            _ = try Self.parse(
                Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".utf8), kind: .response, methods: methods)
        }
    }

    @Test("the HTTP/1.1 server hands the handler a value's bytes and writes a response value's bytes unchanged")
    func serverBytes() async throws {
        let seen = NIOLockedValueBox<[UInt8]?>(nil)
        let server = try await HTTP1Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            let field = request.head.headerFields.first { $0.name.canonicalName == "x-latin" }
            seen.withLockedValue { $0 = field?.withUnsafeBytesOfValue { Array($0) } }
            var fields = HTTPFields()
            fields.append(HTTPField(name: HTTPField.Name("x-back")!, lenientValue: [0x63, 0x61, 0x66, 0xE9]))
            try await writer.respond(HTTPResponse(status: .ok, headerFields: fields), body: ByteBuffer(string: "ok"))
        }
        let connection = try await RawConnection.connect(port: server.port)
        var request = ByteBuffer(string: "GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf")
        request.writeBytes([0xE9])
        request.writeString("\r\nConnection: close\r\n\r\n")
        try await connection.channel.writeAndFlush(request)
        try await connection.waitForClose(timeout: 10)
        let answer = connection.received.withLockedValue { $0 }
        #expect(seen.withLockedValue { $0 } == [0x63, 0x61, 0x66, 0xE9])
        #expect(
            answer.firstRange(of: Array("x-back: caf".utf8) + [0xE9, 0x0D, 0x0A]) != nil,
            "\(String(decoding: answer, as: UTF8.self))")
        await server.close()
    }
}
