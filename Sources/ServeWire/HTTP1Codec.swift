import NIOCore
import NIOHTTP1

// MARK: field values are bytes

/// Header field values are octets (RFC 9110 §5.5): a value may hold bytes that are not UTF-8 (0xE9
/// from a Latin-1 client). NIO's HTTP/1 types carry values as `String`, and its parser decodes them
/// as UTF-8, turning such a byte into U+FFFD. Between this codec and `HTTPFields` a value travels
/// one byte per Unicode scalar of the same number (ISO 8859-1), which maps every byte to a scalar
/// and back: what a peer sent is what the next hop gets. ASCII, nearly every value, reads the same
/// either way and takes the fast path.
enum FieldBytes {
    /// The `String` carrying `bytes`, one scalar per byte.
    static func string<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        var scalars = String.UnicodeScalarView()
        for byte in bytes { scalars.append(Unicode.Scalar(byte)) }
        return String(scalars)
    }

    /// Whether `string` needs the byte mapping at all (it holds a scalar above ASCII).
    static func isASCII(_ string: String) -> Bool {
        string.utf8.allSatisfy { $0 < 0x80 }
    }

    /// The bytes a `string` made by `string(_:)` carries. A scalar above 0xFF cannot have come from
    /// the wire (a value made in code): it is written as its UTF-8, as NIO would.
    static func bytes(_ string: String) -> [UInt8] {
        if Self.isASCII(string) { return Array(string.utf8) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(string.utf8.count)
        for scalar in string.unicodeScalars {
            if scalar.value <= 0xFF {
                bytes.append(UInt8(scalar.value))
            } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
        return bytes
    }

    static func write(_ string: String, to buffer: inout ByteBuffer) {
        if Self.isASCII(string) {
            buffer.writeString(string)
        } else {
            buffer.writeBytes(Self.bytes(string))
        }
    }
}

// MARK: parsing

/// The methods of the requests on one connection whose responses have not begun, oldest first:
/// a response to HEAD (or CONNECT) has no body whatever its framing fields say (RFC 9110 §9.3.2,
/// RFC 9112 §6.3). The server's decoder adds, its encoder takes; the client's encoder adds, its
/// decoder takes. Used on the channel's event loop only.
final class HTTP1MethodQueue {
    private var methods = CircularBuffer<HTTPMethod>(initialCapacity: 2)

    func append(_ method: HTTPMethod) { self.methods.append(method) }

    /// The method the next final response answers, if known.
    func takeFirst() -> HTTPMethod? { self.methods.popFirst() }
}

/// RFC 9112 message parsing, incremental over what has arrived: start line, field lines, and the
/// body's framing (`content-length`, the chunked coding with its trailer section, or the rest of
/// the connection for a response). Field values are kept as the bytes that arrived
/// (`FieldBytes`); field names must be tokens and values free of control characters (RFC 9110
/// §5.1, §5.5); obs-fold is replaced with a space (RFC 9112 §5.2); the whole head is bounded by
/// `maxHeadBytes`. Errors are `HTTPParserError`s, which the server answers with 400.
struct HTTP1Parser {
    enum Kind {
        case request
        case response
    }

    enum Part {
        case requestHead(HTTPRequestHead)
        case responseHead(HTTPResponseHead)
        case body(ByteBuffer)
        case end(HTTPHeaders?)
    }

    /// Legal transitions: head → (end | fixed | chunkSize | untilClose | stopped);
    /// fixed → head; chunkSize → (chunkData | trailers); chunkData → chunkDataEnd → chunkSize;
    /// trailers → head; untilClose and stopped are final.
    private enum State {
        case head
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        /// A response without a length: its body is the rest of the connection (RFC 9112 §6.3).
        case untilClose
        /// Nothing more is parsed: after an upgrade, or a request whose body cannot be framed
        /// (its server answers 400 and closes, RFC 9112 §6.3).
        case stopped
    }

    let kind: Kind
    let maxHeadBytes: Int
    /// Responses: the methods they answer.
    let methods: HTTP1MethodQueue?
    private var state = State.head
    /// While in `.head` or `.trailers`: how far the buffer has been searched for the empty line.
    private var scanned = 0

    /// The longest chunk-size line (with extensions) accepted.
    static let maxChunkLineBytes = 4096

    init(kind: Kind, maxHeadBytes: Int, methods: HTTP1MethodQueue?) {
        self.kind = kind
        self.maxHeadBytes = maxHeadBytes
        self.methods = methods
    }

    /// The next part, consuming its bytes; nil when more bytes are needed.
    mutating func next(_ buffer: inout ByteBuffer) throws -> Part? {
        switch self.state {
        case .head:
            return try self.parseHead(&buffer)
        case .fixed(let remaining):
            return self.bodyBytes(&buffer, remaining: remaining, then: .head) { .fixed(remaining: $0) }
        case .chunkSize:
            guard let line = try self.readLine(&buffer, limit: Self.maxChunkLineBytes) else { return nil }
            let size = try Self.chunkSize(line)
            if size == 0 {
                self.state = .trailers
                self.scanned = 0
                return try self.next(&buffer)
            }
            self.state = .chunkData(remaining: size)
            return try self.next(&buffer)
        case .chunkData(let remaining):
            return self.bodyBytes(&buffer, remaining: remaining, then: .chunkDataEnd) { .chunkData(remaining: $0) }
        case .chunkDataEnd:
            guard let line = try self.readLine(&buffer, limit: 2) else { return nil }
            guard line.isEmpty else { throw HTTPParserError.invalidChunkSize }
            self.state = .chunkSize
            return try self.next(&buffer)
        case .trailers:
            guard let lines = try self.takeBlock(&buffer) else { return nil }
            let fields = try Self.fields(lines[...])
            self.state = .head
            self.scanned = 0
            return .end(fields.isEmpty ? nil : HTTPHeaders(fields))
        case .untilClose:
            guard buffer.readableBytes > 0 else { return nil }
            return .body(buffer.readSlice(length: buffer.readableBytes)!)
        case .stopped:
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return nil
        }
    }

    /// Up to `remaining` body bytes of what has arrived; `then` once they are all read, else
    /// `more(left)`.
    private mutating func bodyBytes(
        _ buffer: inout ByteBuffer, remaining: Int, then: State, more: (Int) -> State
    ) -> Part? {
        guard buffer.readableBytes > 0 else { return nil }
        let take = min(remaining, buffer.readableBytes)
        let slice = buffer.readSlice(length: take)!
        self.state = take == remaining ? then : more(remaining - take)
        return .body(slice)
    }

    /// The connection ended: the last part, if the framing makes the end of input the end of a
    /// message; an error if it cuts one short.
    mutating func endOfInput(_ buffer: inout ByteBuffer) throws -> Part? {
        switch self.state {
        case .untilClose:
            self.state = .stopped
            return .end(nil)
        case .head where self.scanned == 0 && buffer.readableBytes == 0, .stopped:
            return nil
        case .head:
            // Half a head: nothing to answer (a client that hung up), nothing to report.
            if self.kind == .request { return nil }
            throw HTTPParserError.invalidEOFState
        default:
            throw HTTPParserError.invalidEOFState
        }
    }

    // MARK: the head

    private mutating func parseHead(_ buffer: inout ByteBuffer) throws -> Part? {
        // RFC 9112 §2.2: empty lines before a request line are ignored.
        if self.kind == .request, self.scanned == 0 {
            while let first = buffer.readableBytesView.first, first == UInt8(ascii: "\r") || first == UInt8(ascii: "\n")
            {
                if first == UInt8(ascii: "\r") {
                    guard buffer.readableBytes >= 2 else { return nil }
                    guard buffer.readableBytesView.dropFirst().first == UInt8(ascii: "\n") else {
                        throw HTTPParserError.lfExpected
                    }
                    buffer.moveReaderIndex(forwardBy: 2)
                } else {
                    buffer.moveReaderIndex(forwardBy: 1)
                }
            }
        }
        guard let lines = try self.takeBlock(&buffer) else { return nil }
        guard let startLine = lines.first, !startLine.isEmpty else { throw HTTPParserError.invalidConstant }
        let fieldLines = lines.dropFirst()
        // RFC 9112 §2.2: whitespace between the start line and the first field line is refused.
        if let first = fieldLines.first, let byte = first.first, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
        {
            throw HTTPParserError.invalidHeaderToken
        }
        let headers = HTTPHeaders(try Self.fields(fieldLines))
        switch self.kind {
        case .request:
            let (method, target, version) = try Self.requestLine(startLine)
            let head = HTTPRequestHead(version: version, method: method, uri: target, headers: headers)
            self.state = try Self.requestFraming(headers)
            return .requestHead(head)
        case .response:
            let (version, status) = try Self.statusLine(startLine)
            let head = HTTPResponseHead(version: version, status: status, headers: headers)
            self.state = try self.responseFraming(status: Int(status.code), headers: headers)
            return .responseHead(head)
        }
    }

    /// A head or trailer section: its lines up to the empty one, once all of it has arrived,
    /// consumed from `buffer`. The lines keep their bytes; a CR before each LF is dropped.
    private mutating func takeBlock(_ buffer: inout ByteBuffer) throws -> [[UInt8]]? {
        let view = buffer.readableBytesView
        var index = view.startIndex + self.scanned
        var lineStart = view.startIndex
        // Lines before `scanned` are complete and not empty: find where the last one began.
        if self.scanned > 0, let lastLF = view[view.startIndex..<index].lastIndex(of: UInt8(ascii: "\n")) {
            lineStart = lastLF + 1
        }
        var end: Int?
        while index < view.endIndex {
            if view[index] == UInt8(ascii: "\n") {
                var content = index
                if content > lineStart, view[content - 1] == UInt8(ascii: "\r") { content -= 1 }
                if content == lineStart {
                    end = index + 1
                    break
                }
                lineStart = index + 1
            }
            index += 1
            if index - view.startIndex > self.maxHeadBytes { throw HTTPParserError.headerOverflow }
        }
        guard let end else {
            self.scanned = index - view.startIndex
            return nil
        }
        var lines: [[UInt8]] = []
        var start = view.startIndex
        var position = view.startIndex
        while position < end {
            if view[position] == UInt8(ascii: "\n") {
                var content = position
                if content > start, view[content - 1] == UInt8(ascii: "\r") { content -= 1 }
                if content == start { break }
                let line = view[start..<content]
                // A CR anywhere else is a bare CR (RFC 9112 §2.2).
                if line.contains(UInt8(ascii: "\r")) { throw HTTPParserError.lfExpected }
                lines.append(Array(line))
                start = position + 1
            }
            position += 1
        }
        buffer.moveReaderIndex(forwardBy: end - view.startIndex)
        self.scanned = 0
        return lines
    }

    /// One line ending in LF (or CRLF), without it; nil until it has arrived.
    private func readLine(_ buffer: inout ByteBuffer, limit: Int) throws -> ArraySlice<UInt8>? {
        let view = buffer.readableBytesView
        guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count > limit { throw HTTPParserError.invalidChunkSize }
            return nil
        }
        var content = lf
        if content > view.startIndex, view[content - 1] == UInt8(ascii: "\r") { content -= 1 }
        guard content - view.startIndex <= limit else { throw HTTPParserError.invalidChunkSize }
        let line = Array(view[view.startIndex..<content])[...]
        buffer.moveReaderIndex(forwardBy: lf + 1 - view.startIndex)
        return line
    }

    /// Field lines, obs-fold replaced by a space (RFC 9112 §5.2).
    private static func fields(_ lines: ArraySlice<[UInt8]>) throws -> [(String, String)] {
        var fields: [(name: [UInt8], value: [UInt8])] = []
        for line in lines {
            if let first = line.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
                guard !fields.isEmpty else { throw HTTPParserError.invalidHeaderToken }
                let continuation = Self.trimmingWhitespace(line[...])
                try Self.checkValue(continuation)
                if !continuation.isEmpty {
                    if !fields[fields.count - 1].value.isEmpty {
                        fields[fields.count - 1].value.append(UInt8(ascii: " "))
                    }
                    fields[fields.count - 1].value.append(contentsOf: continuation)
                }
                continue
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else {
                throw HTTPParserError.invalidHeaderToken
            }
            let name = line[..<colon]
            // RFC 9112 §5.1: no whitespace between the name and the colon; a name is a token.
            guard name.allSatisfy(Self.isTokenByte) else { throw HTTPParserError.invalidHeaderToken }
            let value = Self.trimmingWhitespace(line[(colon + 1)...])
            try Self.checkValue(value)
            fields.append((Array(name), Array(value)))
        }
        return fields.map { (String(decoding: $0.name, as: UTF8.self), FieldBytes.string($0.value)) }
    }

    /// RFC 9110 §5.5: a value is visible characters, spaces, tabs and obs-text (0x80-0xFF); a
    /// control character (NUL, a bare CR, DEL...) makes the message invalid.
    private static func checkValue(_ value: ArraySlice<UInt8>) throws {
        for byte in value where (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F {
            throw HTTPParserError.invalidHeaderToken
        }
    }

    private static func trimmingWhitespace(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isWhitespace: (UInt8) -> Bool = { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        guard let start = bytes.firstIndex(where: { !isWhitespace($0) }) else { return [] }
        let end = bytes.lastIndex(where: { !isWhitespace($0) })!
        return bytes[start...end]
    }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    /// `method SP request-target SP HTTP-version` (RFC 9112 §3).
    private static func requestLine(_ line: [UInt8]) throws -> (HTTPMethod, String, HTTPVersion) {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw HTTPParserError.invalidConstant }
        guard !parts[0].isEmpty, parts[0].allSatisfy(Self.isTokenByte) else { throw HTTPParserError.invalidMethod }
        // The target is visible ASCII (RFC 9112 §3.2, RFC 3986).
        guard !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw HTTPParserError.invalidURL
        }
        let version = try Self.version(parts[2])
        return (
            HTTPMethod(rawValue: String(decoding: parts[0], as: UTF8.self)), String(decoding: parts[1], as: UTF8.self),
            version
        )
    }

    /// `HTTP-version SP status-code SP [reason-phrase]` (RFC 9112 §4).
    private static func statusLine(_ line: [UInt8]) throws -> (HTTPVersion, HTTPResponseStatus) {
        guard line.count >= 12, line[8] == UInt8(ascii: " ") else { throw HTTPParserError.invalidStatus }
        let version = try Self.version(line[0..<8])
        let code = line[9..<12]
        guard code.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            throw HTTPParserError.invalidStatus
        }
        let reason: String
        if line.count > 12 {
            guard line[12] == UInt8(ascii: " ") else { throw HTTPParserError.invalidStatus }
            reason = FieldBytes.string(line[13...])
        } else {
            reason = ""
        }
        let status = HTTPResponseStatus(statusCode: Int(String(decoding: code, as: UTF8.self))!, reasonPhrase: reason)
        return (version, status)
    }

    private static func version(_ bytes: ArraySlice<UInt8>) throws -> HTTPVersion {
        switch String(decoding: bytes, as: UTF8.self) {
        case "HTTP/1.1": return .http1_1
        case "HTTP/1.0": return .http1_0
        default: throw HTTPParserError.invalidVersion
        }
    }

    /// `content-length`: one decimal value, or a list of equal ones (RFC 9110 §8.6).
    private static func contentLength(_ headers: HTTPHeaders) throws -> Int? {
        let values = headers["content-length"].flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }
        guard !values.isEmpty else { return nil }
        let lengths = try values.map { value -> Int in
            let digits = value.trimmingOWS()
            guard !digits.isEmpty, digits.count <= 18,
                digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                let length = Int(digits)
            else { throw HTTPParserError.invalidContentLength }
            return length
        }
        guard lengths.allSatisfy({ $0 == lengths[0] }) else { throw HTTPParserError.invalidContentLength }
        return lengths[0]
    }

    /// The codings of `transfer-encoding`, if any; whether the last is chunked.
    private static func transferCoding(_ headers: HTTPHeaders) -> (present: Bool, chunked: Bool) {
        let values = headers["transfer-encoding"]
        guard !values.isEmpty else { return (false, false) }
        let codings = values.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }
        return (true, codings.last.map { $0.trimmingOWS().lowercased() == "chunked" } ?? false)
    }

    /// RFC 9112 §6.3 for requests: chunked, a length, or no body. A transfer coding that does not
    /// end in chunked leaves the length unknown: the head goes on (the server answers 400) and
    /// nothing after it is parsed.
    private static func requestFraming(_ headers: HTTPHeaders) throws -> State {
        let coding = Self.transferCoding(headers)
        let length = try Self.contentLength(headers)
        if coding.present {
            // Both framings at once is how requests are smuggled: refused (RFC 9112 §6.1).
            if length != nil { throw HTTPParserError.unexpectedContentLength }
            return coding.chunked ? .chunkSize : .stopped
        }
        if let length, length > 0 { return .fixed(remaining: length) }
        return .head
    }

    /// RFC 9112 §6.3 for responses: none for HEAD, 1xx, 204 and 304; chunked; a length; else the
    /// rest of the connection.
    private mutating func responseFraming(status: Int, headers: HTTPHeaders) throws -> State {
        if (100..<200).contains(status) && status != 101 {
            // An interim response: the final one, for the same request, follows.
            return .head
        }
        let method = self.methods?.takeFirst()
        if status == 101 { return .stopped }
        if method == .HEAD || method == .CONNECT || status == 204 || status == 304 { return .head }
        let coding = Self.transferCoding(headers)
        if coding.present { return coding.chunked ? .chunkSize : .untilClose }
        if let length = try Self.contentLength(headers) { return length > 0 ? .fixed(remaining: length) : .head }
        return .untilClose
    }

    /// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, then extensions, which are ignored.
    private static func chunkSize(_ line: ArraySlice<UInt8>) throws -> Int {
        let digits = line.prefix { byte in
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
        }
        guard !digits.isEmpty, digits.count <= 15, let size = Int(String(decoding: digits, as: UTF8.self), radix: 16)
        else {
            throw HTTPParserError.invalidChunkSize
        }
        let rest = line[digits.endIndex...].drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        guard rest.isEmpty || rest.first == UInt8(ascii: ";") else { throw HTTPParserError.invalidChunkSize }
        return size
    }

    /// Whether the part just returned ended its message (a head without a body does).
    var messageEnded: Bool {
        if case .head = self.state { return true }
        return false
    }
}

/// Message parts from bytes, with `HTTP1Parser`: request parts on the server, response parts on
/// the client. A message without a body is followed by its end at once, as NIO's decoder does.
final class HTTP1Decoder<Head: Equatable>: ByteToMessageDecoder {
    typealias InboundOut = HTTPPart<Head, ByteBuffer>

    private var parser: HTTP1Parser
    /// The head in a parsed part (and what else its arrival means).
    private let head: (HTTP1Parser.Part) -> Head?

    private init(parser: HTTP1Parser, head: @escaping (HTTP1Parser.Part) -> Head?) {
        self.parser = parser
        self.head = head
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let part = try self.parser.next(&buffer) else { return .needMoreData }
        self.deliver(part, context: context)
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while let part = try self.parser.next(&buffer) { self.deliver(part, context: context) }
        if let part = try self.parser.endOfInput(&buffer) { self.deliver(part, context: context) }
        return .needMoreData
    }

    private func deliver(_ part: HTTP1Parser.Part, context: ChannelHandlerContext) {
        switch part {
        case .body(let chunk):
            context.fireChannelRead(Self.wrapInboundOut(.body(chunk)))
        case .end(let trailers):
            context.fireChannelRead(Self.wrapInboundOut(.end(trailers)))
            return
        case .requestHead, .responseHead:
            guard let head = self.head(part) else { preconditionFailure("a parser returned the other kind of head") }
            context.fireChannelRead(Self.wrapInboundOut(.head(head)))
        }
        if self.parser.messageEnded { context.fireChannelRead(Self.wrapInboundOut(.end(nil))) }
    }
}

extension HTTP1Decoder where Head == HTTPRequestHead {
    /// The server side: each request's method is recorded for `HTTP1ResponseEncoder`.
    static func requests(maxHeadBytes: Int, methods: HTTP1MethodQueue) -> HTTP1Decoder {
        HTTP1Decoder(parser: HTTP1Parser(kind: .request, maxHeadBytes: maxHeadBytes, methods: nil)) { part in
            guard case .requestHead(let head) = part else { return nil }
            methods.append(head.method)
            return head
        }
    }
}

extension HTTP1Decoder where Head == HTTPResponseHead {
    /// The client side: the methods `HTTP1RequestEncoder` recorded say which responses have no
    /// body.
    static func responses(maxHeadBytes: Int = 64 << 10, methods: HTTP1MethodQueue) -> HTTP1Decoder {
        HTTP1Decoder(parser: HTTP1Parser(kind: .response, maxHeadBytes: maxHeadBytes, methods: methods)) { part in
            guard case .responseHead(let head) = part else { return nil }
            return head
        }
    }
}

// MARK: writing

/// Writes HTTP/1 message parts as bytes: field values as the bytes they carry (`FieldBytes`), and
/// the body in the framing its head says (RFC 9112 §6): chunked, or as it is.
struct HTTP1Writer {
    private(set) var chunked = false

    mutating func head(
        startLine: String, headers: HTTPHeaders, chunked: Bool, allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        self.chunked = chunked
        var buffer = allocator.buffer(capacity: 256)
        buffer.writeString(startLine)
        buffer.writeStaticString("\r\n")
        for (name, value) in headers {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            // Line breaks and NULs cannot travel in a value (RFC 9110 §5.5): spaces instead, so
            // no value can end a line (response splitting).
            if value.utf8.contains(where: { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") || $0 == 0 }) {
                buffer.writeBytes(
                    FieldBytes.bytes(value).map {
                        $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") || $0 == 0 ? UInt8(ascii: " ") : $0
                    })
            } else {
                FieldBytes.write(value, to: &buffer)
            }
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        return buffer
    }

    /// Writes one body part; a chunk of the chunked coding when chunked (an empty part is not
    /// framed: it would end the body).
    func body(_ data: IOData, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard self.chunked, data.readableBytes > 0 else {
            context.write(NIOAny(data), promise: promise)
            return
        }
        var prefix = context.channel.allocator.buffer(capacity: 24)
        prefix.writeString(String(data.readableBytes, radix: 16))
        prefix.writeStaticString("\r\n")
        if case .byteBuffer(var chunk) = data, chunk.readableBytes <= 16 << 10 {
            // A small chunk: one buffer, one write.
            prefix.writeBuffer(&chunk)
            prefix.writeStaticString("\r\n")
            context.write(NIOAny(IOData.byteBuffer(prefix)), promise: promise)
            return
        }
        context.write(NIOAny(IOData.byteBuffer(prefix)), promise: nil)
        context.write(NIOAny(data), promise: nil)
        context.write(NIOAny(IOData.byteBuffer(ByteBuffer(string: "\r\n"))), promise: promise)
    }

    /// Ends the body: the last chunk and trailers when chunked; otherwise nothing (an empty write
    /// keeps the promise in order).
    func end(_ trailers: HTTPHeaders?, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard self.chunked else {
            context.write(NIOAny(IOData.byteBuffer(context.channel.allocator.buffer(capacity: 0))), promise: promise)
            return
        }
        // The last chunk, then the trailer section: laid out as a head whose start line is "0".
        var last = HTTP1Writer()
        let buffer = last.head(
            startLine: "0", headers: trailers ?? HTTPHeaders(), chunked: false, allocator: context.channel.allocator)
        context.write(NIOAny(IOData.byteBuffer(buffer)), promise: promise)
    }
}

/// The server side: response parts to bytes. Framing as NIO's encoder: no body framing on 1xx,
/// 204 and 304; a `content-length` wins over a transfer coding; a body of unknown length is
/// chunked for HTTP/1.1 (an HTTP/1.0 one ends with the connection, which the server closes). A
/// response to HEAD keeps the framing a GET would get and sends no body (RFC 9110 §9.3.2).
final class HTTP1ResponseEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = IOData

    private let methods: HTTP1MethodQueue
    private var writer = HTTP1Writer()
    private var suppressBody = false

    init(methods: HTTP1MethodQueue) {
        self.methods = methods
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .head(var head):
            let code = head.status.code
            let interim = (100..<200).contains(code) && code != 101
            if !interim, let method = self.methods.takeFirst() {
                self.suppressBody = method == .HEAD || method == .CONNECT
            }
            var chunked = false
            if !head.status.mayHaveResponseBody || interim {
                head.headers.remove(name: "content-length")
                head.headers.remove(name: "transfer-encoding")
            } else if head.headers.contains(name: "content-length") {
                head.headers.remove(name: "transfer-encoding")
            } else if head.version.major == 1 && head.version.minor >= 1 {
                head.headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
                chunked = true
            }
            let startLine = "HTTP/\(head.version.major).\(head.version.minor) \(code) \(head.status.reasonPhrase)"
            let buffer = self.writer.head(
                startLine: startLine, headers: head.headers, chunked: chunked && !self.suppressBody,
                allocator: context.channel.allocator)
            context.write(self.wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
        case .body(let data):
            if self.suppressBody {
                promise?.succeed()
                return
            }
            self.writer.body(data, context: context, promise: promise)
        case .end(let trailers):
            self.writer.end(trailers, context: context, promise: promise)
            self.suppressBody = false
        }
    }
}

/// The client side: request parts to bytes, recording each request's method for the response
/// decoder. The head's framing fields are the caller's (`HTTP1ConnectionPool` sets them).
final class HTTP1RequestEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = IOData

    private let methods: HTTP1MethodQueue
    private var writer = HTTP1Writer()

    init(methods: HTTP1MethodQueue) {
        self.methods = methods
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .head(var head):
            self.methods.append(head.method)
            if head.headers.contains(name: "content-length") { head.headers.remove(name: "transfer-encoding") }
            let startLine = "\(head.method.rawValue) \(head.uri) HTTP/\(head.version.major).\(head.version.minor)"
            let buffer = self.writer.head(
                startLine: startLine, headers: head.headers, chunked: head.headers.isChunked,
                allocator: context.channel.allocator)
            context.write(self.wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
        case .body(let data):
            self.writer.body(data, context: context, promise: promise)
        case .end(let trailers):
            self.writer.end(trailers, context: context, promise: promise)
        }
    }
}
