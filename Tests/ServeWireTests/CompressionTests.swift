import Foundation
import NIOCore
import Testing

@testable import ServeWire

// MARK: - Test data

/// SplitMix64: a tiny seeded generator so "random" payloads are reproducible across runs.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func randomBytes(count: Int, seed: UInt64) -> ByteBuffer {
    var rng = SplitMix64(state: seed)
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { ptr in
        var offset = 0
        while offset < count {
            let word = rng.next()
            let n = min(8, count - offset)
            withUnsafeBytes(of: word) { ptr.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: n) }
            offset += n
        }
        return count
    }
    return buffer
}

/// Highly compressible but not trivial: numbered lines of text, like a JSON or log body.
private func repetitiveBytes(count: Int) -> ByteBuffer {
    var buffer = ByteBuffer()
    var line = 0
    while buffer.readableBytes < 4096 {
        buffer.writeString("{\"token\": \(line), \"text\": \"the quick brown fox jumps over the lazy dog\"}\n")
        line += 1
    }
    // Double by copying so building 16 MiB stays fast in a debug build.
    while buffer.readableBytes < count {
        let chunk = buffer.getSlice(at: buffer.readerIndex, length: min(buffer.readableBytes, count - buffer.readableBytes))!
        buffer.writeImmutableBuffer(chunk)
    }
    return buffer.getSlice(at: buffer.readerIndex, length: count)!
}

private let maxRoundTripSize = 16 << 20
private let randomPool = randomBytes(count: maxRoundTripSize, seed: 0x5EED)
private let repetitivePool = repetitiveBytes(count: maxRoundTripSize)

private let unevenChunks = [1, 7, 4096, 100_000]

/// Splits `buffer` into slices whose sizes cycle through `sizes`.
private func chunked(_ buffer: ByteBuffer, sizes: [Int]) -> [ByteBuffer] {
    var rest = buffer
    var out: [ByteBuffer] = []
    var i = 0
    while rest.readableBytes > 0 {
        let n = min(sizes[i % sizes.count], rest.readableBytes)
        out.append(rest.readSlice(length: n)!)
        i += 1
    }
    return out
}

private func streamCompress(_ data: ByteBuffer, coding: ContentCoding, chunks: [Int] = unevenChunks) throws -> ByteBuffer {
    let compressor = StreamingCompressor(coding: coding)
    var out = ByteBuffer()
    for piece in chunked(data, sizes: chunks) {
        try compressor.compress(piece, into: &out)
    }
    try compressor.finish(into: &out)
    return out
}

private func streamDecompress(
    _ data: ByteBuffer, coding: ContentCoding, limit: Int = .max, chunks: [Int] = unevenChunks.reversed()
) throws -> ByteBuffer {
    let decompressor = StreamingDecompressor(coding: coding, limit: limit)
    var out = ByteBuffer()
    for piece in chunked(data, sizes: chunks) {
        try decompressor.decompress(piece, into: &out)
    }
    try decompressor.finish()
    return out
}

/// Decompresses everything and returns the error, if any, from decompress or finish.
private func decompressError(_ data: ByteBuffer, coding: ContentCoding, limit: Int = .max) -> CompressionError? {
    do {
        _ = try streamDecompress(data, coding: coding, limit: limit)
        return nil
    } catch let error as CompressionError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

// MARK: - Round trips

@Suite struct CompressionRoundTripTests {
    @Test(arguments: [ContentCoding.gzip, .deflate], [0, 1, 1024, 65 * 1024 + 1, 1 << 20, 16 << 20])
    func roundTrip(coding: ContentCoding, size: Int) throws {
        for (name, pool) in [("random", randomPool), ("repetitive", repetitivePool)] {
            let data = pool.getSlice(at: pool.readerIndex, length: size)!
            let compressed = try streamCompress(data, coding: coding)
            if name == "repetitive" && size >= 1024 {
                #expect(compressed.readableBytes < size / 4, "repetitive data should compress well")
            }
            if name == "random" {
                // Incompressible data falls back to stored blocks: tiny, bounded overhead.
                #expect(compressed.readableBytes <= size + size / 1000 + 64)
            }
            let restored = try streamDecompress(compressed, coding: coding, limit: size)
            #expect(restored == data, "\(name) \(coding) \(size) bytes did not round-trip")

            // Byte-at-a-time at the start, large chunks later, on the compressed side too.
            let restoredOddly = try streamDecompress(compressed, coding: coding, chunks: [1, 3, 65_536, 7])
            #expect(restoredOddly == data)
        }
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func oneShotHelpers(coding: ContentCoding) throws {
        let data = repetitivePool.getSlice(at: 0, length: 200_000)!
        let compressed = try Zlib.compress(data, coding: coding)
        #expect(try Zlib.decompress(compressed, coding: coding, limit: 200_000) == data)
        // The same bytes from the streaming API.
        #expect(try streamDecompress(compressed, coding: coding) == data)
        let error = #expect(throws: CompressionError.self) {
            try Zlib.decompress(compressed, coding: coding, limit: 199_999)
        }
        #expect(error?.kind == .outputLimitExceeded(limit: 199_999))
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func formatsAreDistinct(coding: ContentCoding) throws {
        let data = ByteBuffer(string: "hello, hello, hello")
        let compressed = try Zlib.compress(data, coding: coding)
        let bytes = Array(compressed.readableBytesView)
        switch coding {
        case .gzip: #expect(bytes.prefix(3) == [0x1F, 0x8B, 0x08])  // RFC 1952 ID1 ID2 CM
        case .deflate:
            #expect(bytes[0] == 0x78)  // RFC 1950: CM=8, CINFO=7 (32 KiB window)
            #expect((UInt16(bytes[0]) << 8 | UInt16(bytes[1])) % 31 == 0)
        }
        // No auto-detection: the other wrapper is rejected.
        let other: ContentCoding = coding == .gzip ? .deflate : .gzip
        #expect(decompressError(compressed, coding: other)?.kind == .corrupt)
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func limitIsInclusive(coding: ContentCoding) throws {
        let data = randomPool.getSlice(at: 0, length: 100_000)!
        let compressed = try Zlib.compress(data, coding: coding)
        #expect(try streamDecompress(compressed, coding: coding, limit: 100_000) == data)
        #expect(decompressError(compressed, coding: coding, limit: 99_999)?.kind == .outputLimitExceeded(limit: 99_999))
        let empty = try Zlib.compress(ByteBuffer(), coding: coding)
        #expect(try streamDecompress(empty, coding: coding, limit: 0).readableBytes == 0)
        #expect(decompressError(compressed, coding: coding, limit: 0)?.kind == .outputLimitExceeded(limit: 0))
    }
}

// MARK: - Flush

@Suite struct CompressionFlushTests {
    @Test(arguments: [ContentCoding.gzip, .deflate])
    func flushedPrefixDecodesCompletely(coding: ContentCoding) throws {
        let compressor = StreamingCompressor(coding: coding)
        let decompressor = StreamingDecompressor(coding: coding, limit: 1 << 20)
        var expected = ByteBuffer()
        var decoded = ByteBuffer()
        var allWire = ByteBuffer()

        for (i, size) in [1, 10, 5000, 70_000, 3].enumerated() {
            let piece = i % 2 == 0
                ? repetitivePool.getSlice(at: i * 100, length: size)!
                : randomPool.getSlice(at: i * 100, length: size)!
            expected.writeImmutableBuffer(piece)
            var wire = ByteBuffer()
            try compressor.compress(piece, into: &wire)
            try compressor.flush(into: &wire)
            // Z_SYNC_FLUSH ends with an empty stored block: 00 00 ff ff (RFC 1951 §3.2.4).
            #expect(Array(wire.readableBytesView.suffix(4)) == [0x00, 0x00, 0xFF, 0xFF])
            try decompressor.decompress(wire, into: &decoded)
            #expect(decoded == expected, "after flush \(i) the peer must have everything sent so far")
            #expect(!decompressor.isFinished)

            // A fresh decompressor given the whole prefix so far decodes the same.
            allWire.writeImmutableBuffer(wire)
            let fresh = StreamingDecompressor(coding: coding, limit: 1 << 20)
            var freshOut = ByteBuffer()
            try fresh.decompress(allWire, into: &freshOut)
            #expect(freshOut == expected)
        }
        var tail = ByteBuffer()
        try compressor.finish(into: &tail)
        try decompressor.decompress(tail, into: &decoded)
        try decompressor.finish()
        #expect(decoded == expected)
        #expect(decompressor.isFinished)
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func freshDecompressorDecodesFlushedPrefix(coding: ContentCoding) throws {
        let compressor = StreamingCompressor(coding: coding)
        let data = repetitivePool.getSlice(at: 0, length: 12_345)!
        var wire = ByteBuffer()
        // Small input under Z_NO_FLUSH: zlib holds it back.
        try compressor.compress(data, into: &wire)
        try compressor.flush(into: &wire)
        let fresh = StreamingDecompressor(coding: coding, limit: 1 << 20)
        var decoded = ByteBuffer()
        try fresh.decompress(wire, into: &decoded)
        #expect(decoded == data)
        // The stream is not over yet.
        #expect(throws: CompressionError(kind: .truncated, coding: coding)) { try fresh.finish() }
    }

    @Test func flushWithNothingPendingIsHarmless() throws {
        let compressor = StreamingCompressor(coding: .gzip)
        var wire = ByteBuffer()
        try compressor.flush(into: &wire)
        try compressor.flush(into: &wire)
        try compressor.compress(ByteBuffer(), into: &wire)
        try compressor.finish(into: &wire)
        #expect(try Zlib.decompress(wire, coding: .gzip, limit: 0).readableBytes == 0)
    }
}

// MARK: - Bad input

@Suite struct CompressionBadInputTests {
    @Test(arguments: [ContentCoding.gzip, .deflate])
    func flippedBytesInTheMiddleAreCorrupt(coding: ContentCoding) throws {
        // Incompressible data is sent as stored blocks, so damaged payload bytes decode "fine"
        // and only the CRC-32 (gzip) / Adler-32 (zlib) trailer can catch them: this checks that
        // the trailer is verified. Sweep several positions and flip widths.
        let data = randomPool.getSlice(at: 0, length: 50_000)!
        let compressed = try Zlib.compress(data, coding: coding)
        let n = compressed.readableBytes
        for position in stride(from: n / 4, to: 3 * n / 4, by: n / 16) {
            for width in [1, 4] {
                var damaged = compressed
                for i in position..<(position + width) {
                    damaged.setInteger(~damaged.getInteger(at: i, as: UInt8.self)!, at: i)
                }
                let error = decompressError(damaged, coding: coding)
                #expect(error?.kind == .corrupt, "flip \(width) at \(position): got \(String(describing: error))")
            }
        }
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func flippedBytesInHuffmanDataNeverDecodeSilently(coding: ContentCoding) throws {
        // In Huffman-coded blocks a flipped bit usually hits an invalid code or distance
        // (.corrupt), but it can also desynchronise the decoder so that it reads the rest of the
        // body, trailer included, as data and still wants more: indistinguishable from a cut-off
        // stream, so that case is .truncated. What must never happen is a silent success.
        let data = repetitivePool.getSlice(at: 0, length: 200_000)!
        let compressed = try Zlib.compress(data, coding: coding)
        let n = compressed.readableBytes
        var corrupt = 0
        var positions = 0
        for position in stride(from: 12, to: n - 12, by: max(1, n / 64)) {
            var damaged = compressed
            damaged.setInteger(~damaged.getInteger(at: position, as: UInt8.self)!, at: position)
            let error = decompressError(damaged, coding: coding)
            #expect(error != nil, "flip at \(position) decoded without error")
            #expect(error?.kind == .corrupt || error?.kind == .truncated)
            if error?.kind == .corrupt { corrupt += 1 }
            positions += 1
        }
        #expect(corrupt * 2 > positions, "most single-byte flips are detected as corrupt")
    }

    @Test(arguments: [ContentCoding.gzip, .deflate], [UInt64(1), 2, 3, 4])
    func randomGarbageIsCorrupt(coding: ContentCoding, seed: UInt64) {
        let garbage = randomBytes(count: 4096, seed: seed)
        #expect(decompressError(garbage, coding: coding)?.kind == .corrupt)
    }

    @Test func plainTextIsCorrupt() {
        let text = ByteBuffer(string: "{\"this\": \"was never compressed\"}")
        #expect(decompressError(text, coding: .gzip)?.kind == .corrupt)
        #expect(decompressError(text, coding: .deflate)?.kind == .corrupt)
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func truncatedStreamFailsAtFinish(coding: ContentCoding) throws {
        let data = repetitivePool.getSlice(at: 0, length: 100_000)!
        let compressed = try Zlib.compress(data, coding: coding)
        for keep in [0, 1, 5, compressed.readableBytes / 2, compressed.readableBytes - 1] {
            let prefix = compressed.getSlice(at: compressed.readerIndex, length: keep)!
            let decompressor = StreamingDecompressor(coding: coding, limit: 1 << 20)
            var out = ByteBuffer()
            try decompressor.decompress(prefix, into: &out)  // no error yet: more may come
            let error = #expect(throws: CompressionError.self) { try decompressor.finish() }
            #expect(error?.kind == .truncated, "keeping \(keep) bytes")
            #expect(out.readableBytes <= data.readableBytes)
            // What was decoded is a true prefix of the input.
            #expect(out == data.getSlice(at: 0, length: out.readableBytes)!)
        }
    }

    @Test(arguments: [ContentCoding.gzip, .deflate])
    func trailingGarbageIsAnError(coding: ContentCoding) throws {
        let data = repetitivePool.getSlice(at: 0, length: 10_000)!
        let compressed = try Zlib.compress(data, coding: coding)

        // Trailing bytes in the same call as the end of the stream.
        var joined = compressed
        joined.writeString("junk")
        let d1 = StreamingDecompressor(coding: coding, limit: 1 << 20)
        var out1 = ByteBuffer()
        let e1 = #expect(throws: CompressionError.self) { try d1.decompress(joined, into: &out1) }
        #expect(e1?.kind == .corrupt)
        #expect(out1 == data, "everything before the garbage is still delivered")
        #expect(throws: CompressionError.self) { try d1.finish() }  // failure is sticky

        // Trailing bytes in a later call.
        let d2 = StreamingDecompressor(coding: coding, limit: 1 << 20)
        var out2 = ByteBuffer()
        try d2.decompress(compressed, into: &out2)
        try d2.finish()
        let e2 = #expect(throws: CompressionError.self) { try d2.decompress(ByteBuffer(bytes: [0]), into: &out2) }
        #expect(e2?.kind == .corrupt)

        // A second complete stream (e.g. a concatenated gzip member) is also rejected.
        var twice = compressed
        twice.writeImmutableBuffer(compressed)
        #expect(decompressError(twice, coding: coding)?.kind == .corrupt)
    }

    @Test func errorsDescribeThemselves() {
        let error = CompressionError(kind: .outputLimitExceeded(limit: 10_485_760), coding: .gzip)
        #expect(error.description.contains("10485760"))
        #expect(error.description.contains("gzip"))
        for kind: CompressionError.Kind in [.corrupt, .truncated, .zlib(code: -4)] {
            #expect(!CompressionError(kind: kind, coding: .deflate, detail: "x").description.isEmpty)
        }
    }
}

// MARK: - Decompression bomb

@Suite struct CompressionBombTests {
    @Test func gigabyteOfZerosStopsAtTheLimit() throws {
        // 1 GiB of zeros, compressed as a stream from one reused 1 MiB chunk; never held whole.
        let zeros = ByteBuffer(repeating: 0, count: 1 << 20)
        let compressor = StreamingCompressor(coding: .gzip)
        var bomb = ByteBuffer()
        for _ in 0..<1024 {
            try compressor.compress(zeros, into: &bomb)
        }
        try compressor.finish(into: &bomb)
        #expect(bomb.readableBytes < 2 << 20, "DEFLATE tops out near 1032:1, so ~1 MiB")

        let limit = 10 << 20
        let decompressor = StreamingDecompressor(coding: .gzip, limit: limit)
        var out = ByteBuffer()
        var thrown: CompressionError? = nil
        do {
            for piece in chunked(bomb, sizes: [16 * 1024]) {
                try decompressor.decompress(piece, into: &out)
            }
        } catch let error as CompressionError {
            thrown = error
        }
        #expect(thrown?.kind == .outputLimitExceeded(limit: limit))
        #expect(out.readableBytes <= limit + 64 * 1024)
        #expect(out.readableBytes >= limit - 64 * 1024, "it stops near the limit, not early")
        #expect(decompressor.decompressedByteCount <= limit)
        #expect(out.capacity <= 16 << 20, "output grew incrementally, never toward 1 GiB")
        #expect(out == ByteBuffer(repeating: 0, count: out.readableBytes))
        // Failure is sticky: feeding more does not resume inflating.
        var more = ByteBuffer()
        #expect(throws: CompressionError.self) { try decompressor.decompress(bomb, into: &more) }
        #expect(more.readableBytes == 0)
    }
}

// MARK: - Interop with real peers

private func withTempFile<T>(_ contents: ByteBuffer, _ body: (String) throws -> T) throws -> T {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("serve-zlib-\(UUID().uuidString)")
    try Data(contents.readableBytesView).write(to: url)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url.path)
}

/// Runs `argv` (looked up on PATH) and returns its stdout; fails the test on a non-zero exit.
private func runTool(_ argv: [String]) throws -> ByteBuffer {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = argv
    let stdout = Pipe()
    process.standardOutput = stdout
    try process.run()
    let data = stdout.fileHandleForReading.readDataToEndOfFile()  // read before wait: no pipe deadlock
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "\(argv.joined(separator: " ")) exited \(process.terminationStatus)")
    return ByteBuffer(bytes: data)
}

private let pyDecompress = "import sys,zlib; sys.stdout.buffer.write(zlib.decompress(open(sys.argv[1],'rb').read()))"
private let pyCompress = "import sys,zlib; sys.stdout.buffer.write(zlib.compress(open(sys.argv[1],'rb').read(), 9))"

@Suite struct CompressionInteropTests {
    /// A mixed body: text, incompressible bytes, text again, so both block kinds appear.
    private var payload: ByteBuffer {
        var b = repetitivePool.getSlice(at: 0, length: 150_000)!
        b.writeImmutableBuffer(randomPool.getSlice(at: 0, length: 100_000)!)
        b.writeImmutableBuffer(repetitivePool.getSlice(at: 777, length: 50_000)!)
        return b
    }

    /// Our streaming output, including mid-stream sync flushes, as a peer would receive it.
    private func ourStream(_ coding: ContentCoding) throws -> ByteBuffer {
        let compressor = StreamingCompressor(coding: coding)
        var out = ByteBuffer()
        for (i, piece) in chunked(payload, sizes: [1, 7, 4096, 100_000]).enumerated() {
            try compressor.compress(piece, into: &out)
            if i % 3 == 0 { try compressor.flush(into: &out) }
        }
        try compressor.finish(into: &out)
        return out
    }

    @Test func systemGzipDecodesOurGzip() throws {
        let decoded = try withTempFile(try ourStream(.gzip)) { try runTool(["gzip", "-dc", $0]) }
        #expect(decoded == payload)
    }

    @Test func weDecodeSystemGzip() throws {
        // gzip -c on a named file also writes the FNAME and MTIME header fields (RFC 1952 §2.3).
        let encoded = try withTempFile(payload) { try runTool(["gzip", "-c", "-9", $0]) }
        #expect(Array(encoded.readableBytesView.prefix(2)) == [0x1F, 0x8B])
        #expect(try streamDecompress(encoded, coding: .gzip, limit: payload.readableBytes) == payload)
    }

    @Test func pythonZlibDecodesOurDeflate() throws {
        let decoded = try withTempFile(try ourStream(.deflate)) { try runTool(["python3", "-c", pyDecompress, $0]) }
        #expect(decoded == payload)
    }

    @Test func weDecodePythonZlib() throws {
        let encoded = try withTempFile(payload) { try runTool(["python3", "-c", pyCompress, $0]) }
        #expect(try streamDecompress(encoded, coding: .deflate, limit: payload.readableBytes) == payload)
    }
}

// MARK: - Header parsing

@Suite struct ContentCodingHeaderTests {
    @Test(arguments: [
        (nil, nil),
        ("", nil),
        ("gzip", .gzip),
        ("deflate", .deflate),
        ("deflate, gzip;q=0.5", .deflate),
        ("gzip;q=0, deflate", .deflate),
        ("*", .gzip),
        ("identity", nil),
        ("br", nil),
        ("GZIP ; q=1.0", .gzip),
        ("gzip;q=0, deflate;q=0", nil),
        ("gzip, deflate, br", .gzip),
        ("deflate, gzip", .gzip),  // tie: gzip preferred
        ("gzip;q=0.5, deflate;q=0.500", .gzip),
        ("br;q=1.0, deflate;q=0.8, gzip;q=0.79", .deflate),
        ("x-gzip", .gzip),
        ("*;q=0, deflate", .deflate),
        ("*;q=0.5, gzip;q=0", .deflate),
        ("deflate;q=1, *;q=0.5", .deflate),
        ("*;q=0", nil),
        ("gzip;q=nope, deflate;q=0.1", .deflate),  // malformed element ignored
        ("gzip;q=1.5", nil),
        ("  gzip\t;\tQ = 0.3 ,\tdeflate ; q=0.2 ", .gzip),
        ("identity;q=1, gzip;q=0.001", .gzip),
        (",,gzip,,", .gzip),
    ] as [(String?, ContentCoding?)])
    func negotiate(header: String?, expected: ContentCoding?) {
        #expect(ContentCoding.negotiate(acceptEncoding: header) == expected)
    }

    @Test(arguments: [
        ("gzip", .gzip),
        ("x-gzip", .gzip),
        ("GZip", .gzip),
        (" deflate\t", .deflate),
        ("DEFLATE", .deflate),
        ("identity", nil),
        ("br", nil),
        ("", nil),
        ("gzip, deflate", nil),
    ] as [(String, ContentCoding?)])
    func contentEncodingHeader(value: String, expected: ContentCoding?) {
        #expect(ContentCoding(contentEncodingHeader: value) == expected)
    }
}

@Suite("Compression between nodes")
struct CompressionBetweenNodesTests {
    @Test("level 1 from 64 KiB, and none at all for a peer on loopback")
    func policy() {
        let between = HTTP2Configuration.Compression.betweenNodes
        #expect(between.enabled && between.level == 1 && between.minimumSize == 64 << 10)
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "::1"] {
            #expect(!between.forPeer(host: host).enabled, "\(host)")
        }
        for host in ["10.0.0.7", "192.168.1.2", "node-3.cluster.local", "fd00::1"] {
            #expect(between.forPeer(host: host) == between, "\(host)")
        }
    }
}
