import Testing

@testable import ServeCore

@Suite("Constant-time token comparison")
struct ConstantTimeTests {
    @Test("equal only when every byte and the length match; an empty secret matches nothing")
    func equality() {
        #expect(ConstantTime.equals("s3cret", "s3cret"))
        #expect(!ConstantTime.equals("s3creT", "s3cret"))
        #expect(!ConstantTime.equals("s3cre", "s3cret"))
        #expect(!ConstantTime.equals("s3crets3cret", "s3cret"))
        #expect(!ConstantTime.equals("", "s3cret"))
        #expect(!ConstantTime.equals(nil, "s3cret"))
        #expect(!ConstantTime.equals("", ""))
        #expect(ConstantTime.equals("é", "é"))
    }

    @Test("Bearer: the scheme in any case, then exactly the token")
    func bearer() {
        #expect(ConstantTime.isBearer("Bearer t0k", token: "t0k"))
        #expect(ConstantTime.isBearer("bearer t0k", token: "t0k"))
        #expect(ConstantTime.isBearer("BEARER t0k", token: "t0k"))
        #expect(!ConstantTime.isBearer("Bearer t0k ", token: "t0k"))
        #expect(!ConstantTime.isBearer("Bearer  t0k", token: "t0k"))
        #expect(!ConstantTime.isBearer("Basic t0k", token: "t0k"))
        #expect(!ConstantTime.isBearer("Bearer", token: "t0k"))
        #expect(!ConstantTime.isBearer("t0k", token: "t0k"))
        #expect(!ConstantTime.isBearer(nil, token: "t0k"))
    }
}
