/* Instruction-throughput kernels: the arithmetic peak of this CPU on N threads.
 *
 *   cc -O2 -mavx2 -mfma -pthread peak.c -o peak
 *   ./peak KIND THREADS SECONDS      KIND: fp32 | int8 | int8-vnni | bf16
 *
 * Each thread (pinned to one of the CPUs this process may use) runs an inline-assembly loop
 * of independent accumulator chains, so the loop is bound by how many such instructions the
 * core issues per cycle, not by their latency; the compiler cannot hoist or drop anything.
 *
 *   fp32       12 chains of vfmadd231ps ymm: 8 lanes x (mul + add) = 16 FLOP per instruction
 *   int8       6 chains of vpmaddubsw ymm (32 u8 x s8 products, adjacent pairs summed to s16)
 *              + vpmaddwd ymm with ones (s16 pairs to s32) + vpaddd into the accumulator: the
 *              AVX2 u8s8 dot-product sequence of int8 GEMM kernels; 32 multiply-adds = 64 OP
 *   int8-vnni  12 chains of vpdpbusd zmm (AVX512-VNNI): 64 u8 x s8 multiply-adds = 128 OP
 *   bf16       12 chains of vdpbf16ps zmm (AVX512-BF16): 32 bf16 multiply-adds = 64 FLOP
 *
 * Prints one JSON line: {"kind", "threads", "ops", "seconds", "gops"}, where seconds is the
 * wall time from the common start to the last thread's end.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHUNK 200000L /* iterations between clock checks: about a millisecond */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const float F32[16] __attribute__((aligned(64))) = {
    0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f,
    0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
static const int8_t I8[64] __attribute__((aligned(64))) = {
    3, -2, 5, 1, 7, -4, 2, 6, 3, -2, 5, 1, 7, -4, 2, 6, 3, -2, 5, 1, 7, -4,
    2, 6, 3, -2, 5, 1, 7, -4, 2, 6, 3, -2, 5, 1, 7, -4, 2, 6, 3, -2, 5, 1,
    7, -4, 2, 6, 3, -2, 5, 1, 7, -4, 2, 6, 3, -2, 5, 1, 7, -4, 2, 6};
static const uint16_t BF16[32] __attribute__((aligned(64))) = { /* 0.5 in bfloat16 */
    0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00,
    0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00,
    0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00, 0x3f00};
static const int16_t ONES[16] __attribute__((aligned(64))) = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

/* The 12-chain kernels: one instruction per accumulator 0-11, as string pieces. */
#define TWELVE(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11)
#define ZERO_YMM(acc) "vxorps %%ymm" #acc ", %%ymm" #acc ", %%ymm" #acc "\n\t"
#define ZERO_ZMM(acc) "vpxord %%zmm" #acc ", %%zmm" #acc ", %%zmm" #acc "\n\t"
#define FMA(acc) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #acc "\n\t"
#define DPBUSD(acc) "vpdpbusd %%zmm31, %%zmm30, %%zmm" #acc "\n\t"
#define DPBF16(acc) "vdpbf16ps %%zmm31, %%zmm30, %%zmm" #acc "\n\t"

static void fp32_loop(long n) {
    __asm__ volatile(
        "vmovaps (%1), %%ymm14\n\t"
        "vmovaps (%1), %%ymm15\n\t"
        TWELVE(ZERO_YMM)
        "1:\n\t"
        TWELVE(FMA)
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        : "r"(F32)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm14", "xmm15", "cc", "memory");
}
#define FP32_OPS (12.0 * 16.0)

#define U8S8(t, acc)                                 \
    "vpmaddubsw %%ymm13, %%ymm12, %%ymm" #t "\n\t"   \
    "vpmaddwd %%ymm14, %%ymm" #t ", %%ymm" #t "\n\t" \
    "vpaddd %%ymm" #t ", %%ymm" #acc ", %%ymm" #acc "\n\t"

static void int8_loop(long n) {
    __asm__ volatile(
        "vmovdqa (%1), %%ymm12\n\t" /* unsigned bytes */
        "vmovdqa (%1), %%ymm13\n\t" /* signed bytes */
        "vmovdqa (%2), %%ymm14\n\t" /* int16 ones */
        "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
        "vpxor %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpxor %%ymm2, %%ymm2, %%ymm2\n\t"
        "vpxor %%ymm3, %%ymm3, %%ymm3\n\t"
        "vpxor %%ymm4, %%ymm4, %%ymm4\n\t"
        "vpxor %%ymm5, %%ymm5, %%ymm5\n\t"
        "1:\n\t"
        U8S8(6, 0) U8S8(7, 1) U8S8(8, 2) U8S8(9, 3) U8S8(10, 4) U8S8(11, 5)
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        : "r"(I8), "r"(ONES)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "cc", "memory");
}
#define INT8_OPS (6.0 * 64.0)

__attribute__((target("avx512f,avx512vnni"))) static void vnni_loop(long n) {
    __asm__ volatile(
        "vmovdqa64 (%1), %%zmm30\n\t"
        "vmovdqa64 (%1), %%zmm31\n\t"
        TWELVE(ZERO_ZMM)
        "1:\n\t"
        TWELVE(DPBUSD)
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        : "r"(I8)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm30", "xmm31", "cc", "memory");
}
#define VNNI_OPS (12.0 * 128.0)

__attribute__((target("avx512f,avx512bf16"))) static void bf16_loop(long n) {
    __asm__ volatile(
        "vmovdqa64 (%1), %%zmm30\n\t"
        "vmovdqa64 (%1), %%zmm31\n\t"
        TWELVE(ZERO_ZMM)
        "1:\n\t"
        TWELVE(DPBF16)
        "dec %0\n\t"
        "jnz 1b\n\t"
        "vzeroupper\n\t"
        : "+r"(n)
        : "r"(BF16)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm30", "xmm31", "cc", "memory");
}
#define BF16_OPS (12.0 * 64.0)

typedef struct {
    void (*loop)(long);
    int cpu;
    double seconds;
    pthread_barrier_t *start;
    double began, ended;
    long iterations;
} Job;

static void *worker(void *arg) {
    Job *job = (Job *)arg;
    if (job->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(job->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    job->loop(CHUNK); /* warm the core up before the common start */
    pthread_barrier_wait(job->start);
    double begin = now(), end = begin;
    long done = 0;
    while (end - begin < job->seconds) {
        job->loop(CHUNK);
        done += CHUNK;
        end = now();
    }
    job->began = begin;
    job->ended = end;
    job->iterations = done;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s fp32|int8|int8-vnni|bf16 THREADS SECONDS\n", argv[0]);
        return 2;
    }
    void (*loop)(long) = NULL;
    double per_iteration = 0;
    if (!strcmp(argv[1], "fp32")) {
        loop = fp32_loop, per_iteration = FP32_OPS;
    } else if (!strcmp(argv[1], "int8")) {
        loop = int8_loop, per_iteration = INT8_OPS;
    } else if (!strcmp(argv[1], "int8-vnni")) {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512vnni")) {
            fprintf(stderr, "this CPU has no AVX512-VNNI\n");
            return 3;
        }
        loop = vnni_loop, per_iteration = VNNI_OPS;
    } else if (!strcmp(argv[1], "bf16")) {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512bf16")) {
            fprintf(stderr, "this CPU has no AVX512-BF16\n");
            return 3;
        }
        loop = bf16_loop, per_iteration = BF16_OPS;
    } else {
        fprintf(stderr, "unknown kind %s\n", argv[1]);
        return 2;
    }
    int threads = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (threads < 1 || seconds <= 0) {
        fprintf(stderr, "give THREADS >= 1 and SECONDS > 0\n");
        return 2;
    }
    cpu_set_t allowed;
    int cpus[1024], ncpus = 0;
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) {
        for (int c = 0; c < CPU_SETSIZE && ncpus < 1024; c++)
            if (CPU_ISSET(c, &allowed)) cpus[ncpus++] = c;
    }
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    Job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    for (int i = 0; i < threads; i++) {
        jobs[i] = (Job){loop, ncpus ? cpus[i % ncpus] : -1, seconds, &start, 0, 0, 0};
        pthread_create(&ids[i], NULL, worker, &jobs[i]);
    }
    double first = 0, last = 0, ops = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        if (i == 0 || jobs[i].began < first) first = jobs[i].began;
        if (jobs[i].ended > last) last = jobs[i].ended;
        ops += per_iteration * (double)jobs[i].iterations;
    }
    double wall = last - first;
    printf("{\"kind\": \"%s\", \"threads\": %d, \"ops\": %.0f, \"seconds\": %.6f, \"gops\": %.3f}\n",
           argv[1], threads, ops, wall, ops / wall * 1e-9);
    free(jobs);
    free(ids);
    return 0;
}
