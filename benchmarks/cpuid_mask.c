// Run a process natively while it believes it is on an older x86-64 CPU class.
//
// LD_PRELOAD shim used by benchmarks/cpu_classes.py --emulate: it makes the CPUID instruction fault
// (Linux arch_prctl ARCH_SET_CPUID; the CPU needs the `cpuid_fault` flag) and answers each fault with
// the real result minus the features of newer classes, so that runtime dispatch (ONNX Runtime's
// MLAS, numpy) picks the kernels it picks on that class while the code still runs at native speed.
//   CPUID_MASK=avx2    no AVX-512, no VNNI (AVX-512 or VEX), no AMX: a Haswell..Zen 3 class CPU
//   CPUID_MASK=avx512  AVX-512 without VNNI and AMX: a Skylake-SP class CPU
// Build: cc -O2 -shared -fPIC -o cpuid_mask.so cpuid_mask.c
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/prctl.h>

static int level;  // 1: AVX2 class, 2: AVX-512 without VNNI

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    (void)info;
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  // not a CPUID: a real crash, which the default action reports
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], r[4];
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, sub, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {
        r[2] &= ~(1u << 11);                              // ECX: AVX512_VNNI
        r[3] &= ~((1u << 22) | (1u << 24) | (1u << 25));  // EDX: AMX-BF16, AMX-TILE, AMX-INT8
        if (level == 1) {                                 // EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL
            r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
            r[2] &= ~((1u << 1) | (1u << 6) | (1u << 12) | (1u << 14));  // ECX: VBMI, VBMI2, BITALG, VPOPCNTDQ
            r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));   // EDX: 4VNNIW, 4FMAPS, VP2INTERSECT, FP16
        }
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 23));   // EAX: AVX-VNNI, AVX512_BF16, AVX-IFMA
        r[3] &= ~((1u << 4) | (1u << 5));                 // EDX: AVX-VNNI-INT8, AVX-NE-CONVERT
    }
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;  // past the CPUID
}

__attribute__((constructor)) static void start(void) {
    const char *mask = getenv("CPUID_MASK");
    if (!mask) return;
    level = strcmp(mask, "avx2") == 0 ? 1 : strcmp(mask, "avx512") == 0 ? 2 : 0;
    if (!level) return;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    // inherited by threads and forks made from now on; execve resets it (LD_PRELOAD sets it again)
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        // without the cpuid_fault flag CPUID cannot be trapped: running on would test the native class
        static const char why[] = "cpuid_mask: this CPU cannot trap CPUID (no cpuid_fault flag in /proc/cpuinfo), "
                                  "so CPUID_MASK cannot apply; run on a CPU that has it, or under qemu-x86_64 -cpu Haswell\n";
        write(2, why, sizeof why - 1);
        _exit(2);
    }
}
