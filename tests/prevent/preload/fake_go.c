/* Not Go: a C program carrying the marks narcissus reads to recognise a Go binary, so the
 * detection can be tested without a Go toolchain. FAKE_GO_SECTION: a ".go.buildinfo" section
 * (every Go >= 1.13 binary has one). Otherwise: only a Go build-id note (name "Go", type 4) in a
 * PT_NOTE segment, in a section whose name narcissus does not look for. */
#ifdef FAKE_GO_SECTION
__attribute__((used, section(".go.buildinfo"))) static const char buildinfo[32] = "\377 Go buildinf:";
#else
__asm__(".section .note.fakebuildid, \"a\", @note\n"
        ".p2align 2\n"
        ".long 4\n"        /* namesz */
        ".long 8\n"        /* descsz */
        ".long 4\n"        /* type: Go build id */
        ".asciz \"Go\"\n"
        ".byte 0\n"        /* the name padded to 4 bytes */
        ".ascii \"buildid!\"\n"
        ".text\n");
#endif

int main(void) { return 0; }
