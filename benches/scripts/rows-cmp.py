import sys
def load(p):
    d={}
    for line in open(p):
        f=line.split()
        if len(f)==4: d[(f[0],f[1],f[2])]=int(f[3])
    return d
a=load(sys.argv[1]); b=load(sys.argv[2])
names={'0':'4K','1':'2M'}
print("| config | row | before | after | after / before |")
print("|---|---|---|---|---|")
for k in sorted(a, key=lambda k:(k[0],k[1],k[2])):
    if k in b:
        print(f"| {k[0]} {names[k[1]]} | {k[2][4:]} | {a[k]:,} | {b[k]:,} | {b[k]/a[k]:.2f}× |")
