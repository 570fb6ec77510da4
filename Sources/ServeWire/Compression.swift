// Streaming HTTP content-coding compression (gzip and "deflate") on top of the system zlib.
//
// Why zlib directly rather than a pure-Swift codec: the wire layer moves model tensors and
// large JSON bodies between nodes, so compression sits on the hot path of every compressed
// stream. zlib is the reference implementation of RFC 1950/1951/1952, ships on every Linux
// and Darwin host, and its streaming API maps one-to-one onto HTTP/2 DATA frames: each frame
// is fed in as it arrives and whatever zlib emits is appended to the outgoing buffer.

import CZlib
import NIOCore

// MARK: - ContentCoding

/// The HTTP content-codings this runtime can produce and consume (RFC 9110 §8.4.1).
///
/// - `gzip`: the gzip file format of RFC 1952 (a 10-byte header, a DEFLATE (RFC 1951) body and
///   a CRC-32 + length trailer). RFC 9110 §8.4.1.3 registers it; `x-gzip` is an alias.
/// - `deflate`: despite its name this is the *zlib* format of RFC 1950 (a 2-byte header, a
///   DEFLATE body and an Adler-32 trailer), as RFC 9110 §8.4.1.2 specifies. It is **not** a raw
///   RFC 1951 stream; some historical peers got this wrong, and we deliberately do not guess,
///   because a checksummed format is what lets us detect corruption.
///
/// `identity` is intentionally absent: it means "no coding", which callers represent as `nil`.
public enum ContentCoding: String, Sendable, Hashable {
    case gzip
    case deflate

    /// The `windowBits` argument zlib needs to select this wrapper format.
    ///
    /// 15 is the largest (32 KiB) window, which is what RFC 1951 permits and what every peer
    /// may use, so a decoder must accept it. Adding 16 asks zlib for the gzip wrapper instead of
    /// the zlib wrapper; we never use the +32 "auto-detect" mode, so a body labelled `deflate`
    /// that is really gzip (or vice versa) is reported as corrupt rather than silently accepted.
    var windowBits: Int32 {
        switch self {
        case .gzip: return 15 + 16
        case .deflate: return 15
        }
    }

    /// Parses a `content-encoding` header value naming a single coding.
    ///
    /// Accepts `gzip`, `x-gzip` (the legacy alias RFC 9110 §8.4.1.3 says recipients SHOULD treat
    /// as `gzip`) and `deflate`, case-insensitively (content-codings are case-insensitive per
    /// RFC 9110 §8.4.1) and ignoring surrounding whitespace.
    ///
    /// Returns `nil` for `identity`, for unknown codings and for lists of several codings. The
    /// caller decides what `nil` means: for `identity` or an absent header the body is used as-is;
    /// for anything else RFC 9110 §15.5.16 says a server should answer 415 Unsupported Media Type.
    public init?(contentEncodingHeader: String) {
        switch _asciiLowercasedTrimmed(Substring(contentEncodingHeader)) {
        case "gzip", "x-gzip": self = .gzip
        case "deflate": self = .deflate
        default: return nil
        }
    }

    /// Chooses the coding to use for a response from a request's `accept-encoding` header
    /// (RFC 9110 §12.5.3).
    ///
    /// Rules applied:
    /// - Each element is `coding *( OWS ";" OWS parameter )`; the `q` parameter (a qvalue,
    ///   RFC 9110 §12.4.2) gives the preference, default 1. `q=0` means "not acceptable".
    /// - Codings are compared case-insensitively; `x-gzip` counts as `gzip`.
    /// - `*` matches any coding not listed explicitly; an explicit entry always wins over `*`.
    /// - A coding absent from the list (and not matched by `*`) is not acceptable.
    /// - Between `gzip` and `deflate` the higher q wins; on a tie `gzip` is preferred because its
    ///   framing is the one every client implements identically (see the `deflate` note above).
    /// - Elements with malformed q-values are ignored rather than failing the whole header, so a
    ///   single odd token from an intermediary does not disable compression entirely.
    ///
    /// Returns `nil` when the header is absent, empty, or accepts neither coding; the caller
    /// then sends the representation uncompressed. (A missing header formally means "no
    /// preference", but not compressing is always a safe answer to that.) The `identity` entry
    /// is not consulted: whether compressing is worthwhile at all is the caller's decision.
    public static func negotiate(acceptEncoding: String?) -> ContentCoding? {
        guard let header = acceptEncoding else { return nil }
        var gzipQ: Int? = nil  // explicit q, in thousandths
        var deflateQ: Int? = nil
        var starQ: Int? = nil
        for element in header.split(separator: ",", omittingEmptySubsequences: true) {
            var parts = element.split(separator: ";", omittingEmptySubsequences: false).makeIterator()
            guard let rawName = parts.next() else { continue }
            let name = _asciiLowercasedTrimmed(rawName)
            if name.isEmpty { continue }
            var q = 1000
            var valid = true
            while let parameter = parts.next() {
                let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard _asciiLowercasedTrimmed(pair[0]) == "q" else { continue }  // other params: ignore
                guard pair.count == 2, let parsed = _parseQValue(pair[1]) else {
                    valid = false
                    break
                }
                q = parsed
            }
            guard valid else { continue }
            switch name {
            case "gzip", "x-gzip": gzipQ = max(gzipQ ?? 0, q)
            case "deflate": deflateQ = max(deflateQ ?? 0, q)
            case "*": starQ = max(starQ ?? 0, q)
            default: continue
            }
        }
        let g = gzipQ ?? starQ ?? 0
        let d = deflateQ ?? starQ ?? 0
        if g == 0 && d == 0 { return nil }
        return g >= d ? .gzip : .deflate
    }
}

/// Parses an RFC 9110 §12.4.2 qvalue (`0[.ddd]` or `1[.000]`, whitespace tolerated) into
/// thousandths, so comparisons are exact. Returns nil for anything else.
private func _parseQValue(_ raw: Substring) -> Int? {
    let text = raw.trimmingASCIIWhitespace()
    let utf8 = Array(text.utf8)
    guard let first = utf8.first, first == UInt8(ascii: "0") || first == UInt8(ascii: "1") else {
        return nil
    }
    var value = Int(first - UInt8(ascii: "0")) * 1000
    if utf8.count == 1 { return value }
    guard utf8[1] == UInt8(ascii: "."), utf8.count <= 5 else { return nil }
    var scale = 100
    for digit in utf8.dropFirst(2) {
        guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
        value += Int(digit - UInt8(ascii: "0")) * scale
        scale /= 10
    }
    return value <= 1000 ? value : nil
}

private func _asciiLowercasedTrimmed(_ text: Substring) -> String {
    String(text.trimmingASCIIWhitespace()).lowercased()
}

extension Substring {
    fileprivate func trimmingASCIIWhitespace() -> Substring {
        func isOWS(_ c: Character) -> Bool { c == " " || c == "\t" || c == "\r" || c == "\n" }
        var s = self
        while let c = s.first, isOWS(c) { s = s.dropFirst() }
        while let c = s.last, isOWS(c) { s = s.dropLast() }
        return s
    }
}

// MARK: - CompressionError

/// A failure to compress or decompress a content-coded body.
///
/// Check `kind` to decide how to react; `description` is a sentence for logs and error responses
/// that says what went wrong and what to do about it.
public struct CompressionError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The input is not a valid stream of the declared coding: a bad header, an invalid
        /// DEFLATE block, a checksum mismatch, a preset dictionary we cannot supply, or bytes
        /// after the end of the stream. Usually a peer bug or a mislabelled `content-encoding`.
        case corrupt
        /// The input ended before the compressed stream did (no final block / trailer).
        case truncated
        /// Decompressing would produce more than `limit` bytes in total. This is the defence
        /// against decompression bombs: a few KiB of DEFLATE can expand ~1000:1.
        case outputLimitExceeded(limit: Int)
        /// zlib reported an error that is not about the data (out of memory, inconsistent
        /// stream state). `code` is the raw zlib return code (e.g. `Z_MEM_ERROR` = -4).
        case zlib(code: Int32)
    }

    /// What went wrong; match on this.
    public let kind: Kind
    /// The coding being processed when it went wrong.
    public let coding: ContentCoding
    /// zlib's own diagnostic (`z_stream.msg`), if it gave one.
    public let detail: String?

    public init(kind: Kind, coding: ContentCoding, detail: String? = nil) {
        self.kind = kind
        self.coding = coding
        self.detail = detail
    }

    public var description: String {
        let zlibNote = detail.map { " (zlib: \($0))" } ?? ""
        switch kind {
        case .corrupt:
            return "The \(coding.rawValue)-encoded body is corrupt\(zlibNote). The peer sent bytes that are "
                + "not a valid \(coding.rawValue) stream; check that its content-encoding header matches the body, "
                + "and reject the message (HTTP 400) rather than retrying it unchanged."
        case .truncated:
            return "The \(coding.rawValue)-encoded body ended before the compressed stream did\(zlibNote). "
                + "The peer closed the stream early or a proxy cut it short; treat the message as incomplete "
                + "and retry it."
        case .outputLimitExceeded(let limit):
            return "The \(coding.rawValue)-encoded body decompresses to more than the \(limit)-byte limit; "
                + "decompression was stopped. Reject the message (HTTP 413), or raise the limit if bodies this "
                + "large are expected."
        case .zlib(let code):
            return "zlib failed while processing a \(coding.rawValue) stream with code \(code)\(zlibNote). "
                + "This is not caused by the data; it usually means memory is exhausted. Drop this stream and "
                + "check the process's memory use."
        }
    }
}

// MARK: - Shared plumbing

/// The most output one `deflate`/`inflate` call may write. Bounding each step keeps memory
/// growth incremental and, for inflate, lets the output limit be enforced within one step.
private let zlibStepBytes = 64 * 1024

/// The least writable space we ask the output buffer for before a zlib call. Small, so that
/// feeding a few bytes does not force a large allocation; `ByteBuffer` grows by doubling, so
/// repeatedly asking for this much is still amortised O(1).
private let zlibMinimumWritable = 4 * 1024

private func zlibMessage(_ stream: UnsafeMutablePointer<z_stream>) -> String? {
    stream.pointee.msg.map { String(cString: $0) }
}

/// Allocates a `z_stream` and sets it up with `initialize` (`deflateInit2` or `inflateInit2`,
/// named by `name`). Traps if zlib cannot: it fails only when out of memory, and as with any
/// allocation failure there is no useful recovery.
private func makeZStream(
    _ name: String,
    _ initialize: (UnsafeMutablePointer<z_stream>) -> Int32
) -> UnsafeMutablePointer<z_stream> {
    let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    stream.initialize(to: z_stream())
    let rc = initialize(stream)
    guard rc == Z_OK else {
        let message = zlibMessage(stream) ?? "code \(rc)"
        stream.deinitialize(count: 1)
        stream.deallocate()
        fatalError("\(name) failed: \(message)")
    }
    return stream
}

/// Frees a stream from `makeZStream` once `end` (`deflateEnd` or `inflateEnd`) has freed zlib's
/// state in it.
private func freeZStream(_ stream: UnsafeMutablePointer<z_stream>, _ end: (UnsafeMutablePointer<z_stream>) -> Int32) {
    _ = end(stream)
    stream.deinitialize(count: 1)
    stream.deallocate()
}

/// Runs `body` with `input`'s readable bytes as the stream's input, read straight from the
/// buffer, and takes them back after: zlib must keep no pointer into a buffer past the call.
private func withZlibInput<Result>(
    _ input: ByteBuffer,
    of stream: UnsafeMutablePointer<z_stream>,
    _ body: () throws -> Result
) rethrows -> Result {
    try input.withUnsafeReadableBytes { inBytes in
        // zlib's next_in is non-const for historical reasons; it never writes through it.
        stream.pointee.next_in = inBytes.baseAddress.map {
            UnsafeMutablePointer(mutating: $0.assumingMemoryBound(to: Bytef.self))
        }
        // ByteBuffer readable bytes never exceed UInt32.max, so this cannot trap.
        stream.pointee.avail_in = uInt(inBytes.count)
        defer {
            stream.pointee.next_in = nil
            stream.pointee.avail_in = 0
        }
        return try body()
    }
}

/// One zlib call (`deflate` or `inflate`) that writes straight into `output`'s writable bytes,
/// at most `step` of them; `output` keeps at most `keep` of what it wrote. Returns zlib's code,
/// the bytes it wrote, and whether it filled the space it was given (more may be pending).
private func zlibStep(
    _ stream: UnsafeMutablePointer<z_stream>,
    into output: inout ByteBuffer,
    step: Int,
    keepingAtMost keep: Int = .max,
    _ call: (UnsafeMutablePointer<z_stream>) -> Int32
) -> (rc: Int32, produced: Int, outputFull: Bool) {
    var rc: Int32 = Z_OK
    var produced = 0
    var outputFull = false
    output.writeWithUnsafeMutableBytes(minimumWritableBytes: min(step, zlibMinimumWritable)) { outBytes in
        let room = min(outBytes.count, step)
        stream.pointee.next_out = outBytes.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(room)
        rc = call(stream)
        produced = room - Int(stream.pointee.avail_out)
        outputFull = stream.pointee.avail_out == 0
        stream.pointee.next_out = nil
        stream.pointee.avail_out = 0
        return min(produced, keep)
    }
    return (rc, produced, outputFull)
}

// MARK: - StreamingCompressor

/// Incrementally compresses one body into gzip (RFC 1952) or zlib/"deflate" (RFC 1950) format.
///
/// Feed the body with `compress(_:into:)` as it becomes available, call `flush(into:)` whenever
/// the peer must be able to decode everything sent so far (e.g. before a streamed token is
/// written to the wire), and call `finish(into:)` once to write the final block and trailer.
///
/// Output is written straight into the caller's `ByteBuffer` and input is read straight from
/// the input's readable bytes; the only allocations are zlib's own state (once, in `init`) and
/// growth of the output buffer.
///
/// Not thread-safe and not `Sendable`: it owns a mutable C `z_stream`. Use it from one event loop.
///
/// After `finish(into:)`, calling `compress`, `flush` or `finish` again is a programming error
/// and traps with a precondition failure (the stream's trailer has already been written, so
/// there is no correct output to produce).
public final class StreamingCompressor {
    /// The coding this compressor produces.
    public let coding: ContentCoding
    private let stream: UnsafeMutablePointer<z_stream>
    private var finished = false

    /// - Parameters:
    ///   - coding: the output format.
    ///   - level: zlib compression level, 0 (store) … 9 (best), or -1 for zlib's default (6).
    ///     6 is zlib's default and the usual HTTP choice: most of level 9's ratio at a fraction
    ///     of the CPU. Values outside -1...9 trap.
    ///
    /// Traps if zlib cannot allocate its ~256 KiB of state; as with any allocation failure there
    /// is no useful recovery.
    public init(coding: ContentCoding, level: Int32 = 6) {
        precondition((-1...9).contains(level), "zlib compression level must be in -1...9, got \(level)")
        self.coding = coding
        // memLevel 8 is zlib's default (MAX_MEM_LEVEL is 9): ~128 KiB of hash state per stream.
        self.stream = makeZStream("deflateInit2") { czlib_deflateInit2($0, level, coding.windowBits, 8) }
    }

    deinit {
        freeZStream(self.stream) { deflateEnd($0) }
    }

    /// Compresses `input` (its readable bytes) and appends whatever zlib emits to `output`.
    ///
    /// Uses `Z_NO_FLUSH`, so zlib may buffer small inputs and append nothing yet; that is what
    /// gives the best ratio. Call `flush(into:)` when the peer needs the data now.
    public func compress(_ input: ByteBuffer, into output: inout ByteBuffer) throws {
        precondition(!self.finished, "StreamingCompressor.compress called after finish(into:)")
        if input.readableBytes == 0 { return }
        try self.run(input, flush: Z_NO_FLUSH, into: &output)
    }

    /// Emits everything compressed so far, ending on a byte boundary (`Z_SYNC_FLUSH`), so that a
    /// streaming decoder on the other side can decode all input given so far. Costs a few bytes
    /// (an empty stored block, `00 00 ff ff`) and resets nothing: the dictionary is kept, so
    /// compression ratio is barely affected.
    public func flush(into output: inout ByteBuffer) throws {
        precondition(!self.finished, "StreamingCompressor.flush called after finish(into:)")
        try self.run(ByteBuffer(), flush: Z_SYNC_FLUSH, into: &output)
    }

    /// Writes the final block and the format's trailer (CRC-32 + size for gzip, Adler-32 for
    /// zlib). Call exactly once, after the last `compress`.
    public func finish(into output: inout ByteBuffer) throws {
        precondition(!self.finished, "StreamingCompressor.finish called twice")
        try self.run(ByteBuffer(), flush: Z_FINISH, into: &output)
        self.finished = true
    }

    private func run(_ input: ByteBuffer, flush: Int32, into output: inout ByteBuffer) throws {
        let stream = self.stream
        let coding = self.coding
        try withZlibInput(input, of: stream) {
            while true {
                let (rc, _, outputFull) = zlibStep(stream, into: &output, step: zlibStepBytes) { CZlib.deflate($0, flush) }
                switch rc {
                case Z_STREAM_END:
                    return  // only with Z_FINISH: trailer written
                case Z_OK, Z_BUF_ERROR:
                    // Z_BUF_ERROR just means "no progress possible": nothing left to do.
                    if rc == Z_BUF_ERROR { return }
                    // If zlib filled the space we gave it there may be more pending output;
                    // with Z_FINISH we must continue until Z_STREAM_END.
                    if outputFull || flush == Z_FINISH || stream.pointee.avail_in > 0 { continue }
                    return
                default:
                    throw CompressionError(kind: .zlib(code: rc), coding: coding, detail: zlibMessage(stream))
                }
            }
        }
    }
}

@available(*, unavailable, message: "StreamingCompressor owns a mutable z_stream; use it from one event loop")
extension StreamingCompressor: Sendable {}

// MARK: - StreamingDecompressor

/// Incrementally decompresses one gzip (RFC 1952) or zlib/"deflate" (RFC 1950) body, with a
/// hard cap on the total decompressed size.
///
/// Feed received bytes with `decompress(_:into:)` in any chunking; call `finish()` when the
/// peer signals end of body to verify the compressed stream was complete.
///
/// Safety properties, which is why this exists rather than a one-shot `uncompress`:
/// - **Bounded output.** The total decompressed size never exceeds `limit`; the call that
///   would pass it throws `.outputLimitExceeded` having appended at most `limit` bytes in total
///   across all calls. Each inflate step writes at most 64 KiB, so a decompression bomb costs
///   at most `limit` bytes of memory, never its expanded size.
/// - **Strict framing.** The wrapper format is fixed by `coding` (no auto-detection), the
///   checksum in the trailer is verified, and any byte after the end of the stream is
///   `.corrupt`. Concatenated gzip members (RFC 1952 §2.2) are therefore rejected: HTTP
///   peers send a single member, and accepting trailing data would let a body smuggle bytes past
///   the checksum.
/// - **Sticky failure.** After any error every later call throws the same error.
///
/// Not thread-safe and not `Sendable`: use it from one event loop.
public final class StreamingDecompressor {
    /// The coding this decompressor accepts.
    public let coding: ContentCoding
    /// The maximum total number of decompressed bytes over the whole stream.
    public let limit: Int
    /// Decompressed bytes produced so far (always ≤ `limit`).
    public private(set) var decompressedByteCount: Int = 0
    private let stream: UnsafeMutablePointer<z_stream>
    private var reachedEnd = false
    private var failure: CompressionError? = nil

    /// - Parameters:
    ///   - coding: the format the input is declared to be in (from `content-encoding`).
    ///   - limit: the most decompressed bytes to accept in total, ≥ 0. Choose it from what the
    ///     endpoint can legitimately receive, not from the compressed size.
    ///
    /// Traps if zlib cannot allocate its ~7 KiB of state (plus its 32 KiB window, allocated on
    /// first use).
    public init(coding: ContentCoding, limit: Int) {
        precondition(limit >= 0, "decompression limit must be non-negative, got \(limit)")
        self.coding = coding
        self.limit = limit
        self.stream = makeZStream("inflateInit2") { czlib_inflateInit2($0, coding.windowBits) }
    }

    deinit {
        freeZStream(self.stream) { inflateEnd($0) }
    }

    /// Whether the compressed stream's end (final block and trailer) has been seen.
    public var isFinished: Bool { self.reachedEnd }

    /// Decompresses `input` (its readable bytes) and appends the result to `output`.
    ///
    /// - Throws: `CompressionError` with kind
    ///   - `.outputLimitExceeded(limit:)` as soon as the total output would pass `limit`
    ///     (`output` then holds everything up to exactly `limit` bytes in total);
    ///   - `.corrupt` for invalid data, a checksum mismatch, a preset dictionary, or any bytes
    ///     after the end of the stream;
    ///   - `.zlib(code:)` for non-data failures such as out of memory.
    ///   Bytes decoded before the error stay appended to `output`.
    public func decompress(_ input: ByteBuffer, into output: inout ByteBuffer) throws {
        if let failure = self.failure { throw failure }
        if input.readableBytes == 0 { return }
        if self.reachedEnd {
            throw self.fail(.corrupt, detail: "\(input.readableBytes) byte(s) after the end of the compressed stream")
        }
        let stream = self.stream
        try withZlibInput(input, of: stream) {
            while true {
                let remaining = self.limit - self.decompressedByteCount
                // One byte more than the limit allows, so we can tell "exactly at the limit"
                // from "would pass it"; that extra byte is never kept.
                let step = remaining < zlibStepBytes ? remaining + 1 : zlibStepBytes
                // Keeping at most `remaining` drops the probe byte past the limit.
                let (rc, produced, outputFull) = zlibStep(stream, into: &output, step: step, keepingAtMost: remaining) {
                    inflate($0, Z_NO_FLUSH)
                }
                if produced > remaining {
                    self.decompressedByteCount = self.limit
                    throw self.fail(.outputLimitExceeded(limit: self.limit), detail: nil)
                }
                self.decompressedByteCount += produced
                switch rc {
                case Z_STREAM_END:
                    self.reachedEnd = true
                    let trailing = Int(stream.pointee.avail_in)
                    if trailing > 0 {
                        throw self.fail(.corrupt, detail: "\(trailing) byte(s) after the end of the compressed stream")
                    }
                    return
                case Z_OK:
                    if outputFull || stream.pointee.avail_in > 0 { continue }
                    return
                case Z_BUF_ERROR:
                    // No progress possible: input exhausted; wait for more.
                    return
                case Z_DATA_ERROR:
                    throw self.fail(.corrupt, detail: zlibMessage(stream))
                case Z_NEED_DICT:
                    throw self.fail(.corrupt, detail: "stream requires a preset dictionary, which HTTP cannot supply")
                default:
                    throw self.fail(.zlib(code: rc), detail: zlibMessage(stream))
                }
            }
        }
    }

    /// Declares that no more input will come.
    ///
    /// - Throws: `CompressionError` with kind `.truncated` if the compressed stream has not
    ///   reached its end (including a completely empty body), or the earlier error if
    ///   decompression already failed.
    public func finish() throws {
        if let failure = self.failure { throw failure }
        if !self.reachedEnd {
            throw self.fail(.truncated, detail: nil)
        }
    }

    private func fail(_ kind: CompressionError.Kind, detail: String?) -> CompressionError {
        let error = CompressionError(kind: kind, coding: self.coding, detail: detail)
        self.failure = error
        return error
    }
}

@available(*, unavailable, message: "StreamingDecompressor owns a mutable z_stream; use it from one event loop")
extension StreamingDecompressor: Sendable {}

// MARK: - One-shot helpers

/// One-shot helpers for bodies that are already complete in memory. They use the streaming
/// types, so the same limits and strictness apply.
public enum Zlib {
    /// Compresses a whole body into `coding`'s format.
    public static func compress(_ buffer: ByteBuffer, coding: ContentCoding, level: Int32 = 6) throws -> ByteBuffer {
        let compressor = StreamingCompressor(coding: coding, level: level)
        var output = ByteBuffer()
        try compressor.compress(buffer, into: &output)
        try compressor.finish(into: &output)
        return output
    }

    /// Decompresses a whole body, which must be exactly one complete stream of `coding`.
    ///
    /// - Throws: `CompressionError` (`.corrupt`, `.truncated`, `.outputLimitExceeded`, `.zlib`).
    public static func decompress(_ buffer: ByteBuffer, coding: ContentCoding, limit: Int) throws -> ByteBuffer {
        let decompressor = StreamingDecompressor(coding: coding, limit: limit)
        var output = ByteBuffer()
        try decompressor.decompress(buffer, into: &output)
        try decompressor.finish()
        return output
    }
}
